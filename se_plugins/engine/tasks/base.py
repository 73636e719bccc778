"""The contract between the task-agnostic ``Trainer`` and a task (detection, segmentation, ...).

A task turns the config into a model, datasets and loaders, computes the training losses of one batch,
evaluates, and draws predictions. The trainer owns everything else: device, DDP wrapping, AMP, optimizer,
LR schedule, gradient clipping, checkpoints, logging, and when to evaluate.

Call order (every rank)::

    task = MyTask(cfg)                        # cheap: no I/O
    task.device, task.dist = device, dist     # set by the Trainer before any build_* call
    train_ds, val_ds = task.build_datasets()  # Trainer.evaluate calls task.build_val_dataset() instead
    model = task.build_model()                # Trainer: .to(device), channels_last, SyncBN, DDP
    train_loader = task.build_train_loader(train_ds, distributed)
    val_loader = task.build_val_loader(val_ds, distributed)
    per epoch:  train_loader.sampler.set_epoch(e); for batch in train_loader:
                    with task.autocast(): losses = task.train_step(ddp_model, batch, device)
                metrics = task.evaluate(model, val_loader, device)     # unwrapped model, in eval mode
    at the end (rank 0): task.draw_predictions(model, val_ds, out_dir, num)

Minimal example (see ``tests/toy_task.py`` for a complete one)::

    class MyTask(Task):
        main_metric = "accuracy"

        def build_model(self):
            return Net(self.cfg.model.num_classes)

        def build_datasets(self):
            return TrainSet(self.cfg.data.root), ValSet(self.cfg.data.root)

        def train_step(self, model, batch, device):
            images, labels = move_to(batch, device)
            return {"loss": F.cross_entropy(model(images), labels)}

        @torch.no_grad()
        def evaluate(self, model, loader, device):
            correct = total = 0
            for images, labels in loader:
                pred = model(images.to(device)).argmax(1).cpu()
                correct, total = correct + (pred == labels).sum().item(), total + len(labels)
            counts = all_gather_object((correct, total))   # every rank saw a shard of the data
            return {"accuracy": sum(c for c, _ in counts) / max(1, sum(t for _, t in counts))}
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from se_plugins.engine.distributed import DistInfo, ShardSampler
from se_plugins.errors import ConfigError

logger = logging.getLogger("se_plugins.engine")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)
"""Default 1-channel statistics: the mean of ImageNet's RGB values (timm's conv adaptation sums the RGB filters)."""


class Task(abc.ABC):
    """Base class of the tasks the ``Trainer`` trains and evaluates.

    Subclasses set ``main_metric`` (class or instance attribute) and implement ``build_model``,
    ``build_datasets``, ``train_step`` and ``evaluate``; the loaders, ``collate`` and ``draw_predictions``
    have usable defaults, and ``make_loader`` builds a loader around a custom (batch) sampler.

    Attributes:
        main_metric: Key of ``evaluate``'s result that selects ``best.pth`` (higher is better), e.g. "AP50".
        drop_last_train: Drop the last incomplete training batch (default False).
        cfg: The run config (``se_plugins.engine.config.Config`` schema).
        device: The device the trainer runs on (set by the trainer before any ``build_*`` call).
        dist: This process's place in a DDP job (set by the trainer).
    """

    main_metric: str = ""
    drop_last_train: bool = False

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.dist = DistInfo()

    # ------------------------------------------------------------------------------------ to implement

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """Build the model on CPU (the trainer moves it to the device and wraps it for DDP)."""

    @abc.abstractmethod
    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """Build ``(train_dataset, val_dataset)`` (data preparation included).

        Runs on every rank; wrap one-time preparation (e.g. generating the shapes data) in
        ``se_plugins.engine.distributed.main_process_first()`` so rank 0 does it while the others wait.
        """

    @abc.abstractmethod
    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """Forward one training batch and return its losses.

        Args:
            model: The (possibly DDP-wrapped) model in train mode; call it, do not unwrap it.
            batch: One item of the training loader (what ``collate`` returned), still on CPU.
            device: Where the model lives; move the batch there (``move_to``).

        Returns:
            Scalar tensors: ``"loss"`` (the total that is back-propagated) plus any parts to log (detached or
            not; they are only logged). Every rank must return the same keys.
        """

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """Run the full evaluation on ``loader`` and return ``{metric: value}`` including ``main_metric``.

        The trainer passes the unwrapped model in eval mode under ``torch.no_grad()`` (no autocast: use
        ``self.autocast()`` where wanted) and calls this on every rank. Under DDP each rank sees a shard of
        the data (``ShardSampler``): gather predictions/statistics (e.g. ``all_gather_object``); only rank 0's
        result needs to be right, the trainer broadcasts it to all ranks.
        """

    # ------------------------------------------------------------------------------------ defaults

    def build_val_dataset(self) -> Dataset:
        """The validation dataset alone (for ``Trainer.evaluate``); override to skip loading training data."""
        return self.build_datasets()[1]

    def collate(self, batch: Sequence[Any]) -> Any:
        """Merge dataset items into a batch (default: ``torch.utils.data.default_collate``)."""
        return default_collate(batch)

    def build_train_loader(self, dataset: Dataset, distributed: bool) -> DataLoader:
        """Shuffling loader of ``train.batch_size`` items per process.

        The order is a pure function of ``(seed, epoch)`` via ``DistributedSampler`` (also in a single
        process, with one replica), and the trainer calls ``sampler.set_epoch`` and reseeds
        ``loader.generator`` each epoch, so resuming from a checkpoint replays exactly the same batches.
        """
        sampler = self.train_sampler(dataset, distributed)
        return self.make_loader(dataset, self.cfg.train.batch_size, sampler, drop_last=self.drop_last_train)

    def train_sampler(self, dataset: Dataset, distributed: bool) -> DistributedSampler:
        """Shuffling index sampler, a pure function of ``(seed, epoch)`` (one replica outside DDP)."""
        return DistributedSampler(
            dataset,
            num_replicas=self.dist.world_size if distributed else 1,
            rank=self.dist.rank if distributed else 0,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=False,
        )

    def build_val_loader(self, dataset: Dataset, distributed: bool) -> DataLoader:
        """Sequential loader of ``eval.batch_size`` items; under DDP each rank gets a disjoint shard."""
        sampler = ShardSampler(dataset, self.dist.rank, self.dist.world_size) if distributed else None
        return self.make_loader(dataset, self.cfg.eval.batch_size, sampler, persistent=False)

    def draw_predictions(self, model: nn.Module, dataset: Dataset, out_dir: str | os.PathLike, num: int) -> list[Path]:
        """Write PNGs of the model's predictions on the first ``num`` items of ``dataset`` into ``out_dir``.

        Called on rank 0 only, with the unwrapped model in eval mode. Default: draws nothing.

        Returns:
            The files written.
        """
        return []

    # ------------------------------------------------------------------------------------ helpers

    def image_reader(self) -> Any:
        """The ``ImageReader`` of ``data.channels`` / ``data.alpha`` / ``data.intensity*`` (described once in the log).

        Raises:
            ConfigError: inconsistent intensity settings (e.g. ``intensity: range`` without ``intensity_range``).
        """
        from se_plugins.data.decode import ImageReader
        from se_plugins.engine.config import check_data_imagery

        check_data_imagery(self.cfg.data)
        try:
            reader = ImageReader.from_config(self.cfg.data)
        except ValueError as e:
            raise ConfigError(f"data: {e}") from None
        if not getattr(self, "_reader_logged", False) and self.dist.is_main:
            logger.info(reader.describe())
            self._reader_logged = True
        return reader

    def check_first_item(self, dataset: Dataset) -> None:
        """Load item 0 of ``dataset``, so that data the reader rejects stops the run with its one line at start.

        E.g. 4-band files with ``data.channels: 3``. The RNG states are left as they were.
        """
        if len(dataset):  # type: ignore[arg-type]
            with torch.random.fork_rng(devices=[]):
                dataset[0]

    def image_mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel ``(mean, std)`` the model input is normalised with, for ``data.channels`` channels.

        ``data.mean`` / ``data.std`` when set; else ImageNet's for 3 channels and their averages (0.449, 0.226)
        for 1 channel. Other channel counts have no default.

        Raises:
            ConfigError: ``data.mean`` / ``data.std`` missing for a channel count without a default.
        """
        data = self.cfg.data
        defaults = {3: (IMAGENET_MEAN, IMAGENET_STD), 1: (GRAY_MEAN, GRAY_STD)}.get(int(data.channels))
        if (data.mean is None or data.std is None) and defaults is None:
            raise ConfigError(
                f"data.mean/data.std: required for data.channels {data.channels} (one value per channel; "
                "`python -m se_plugins.engine.channel_stats CONFIG` prints them for the training images)"
            )
        mean = list(data.mean) if data.mean is not None else list(defaults[0])  # type: ignore[index]
        std = list(data.std) if data.std is not None else list(defaults[1])  # type: ignore[index]
        return [float(v) for v in mean], [float(v) for v in std]

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` as configured (``train.amp`` on a CUDA device), else a no-op context."""
        if self.cfg.train.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=getattr(torch, self.cfg.train.amp_dtype))
        return contextlib.nullcontext()

    def make_loader(
        self,
        dataset: Dataset,
        batch_size: int | None = None,
        sampler: Any = None,
        batch_sampler: Any = None,
        drop_last: bool = False,
        persistent: bool = True,
    ) -> DataLoader:
        """A ``DataLoader`` with this package's conventions, for tasks that bring their own (batch) sampler.

        ``collate_fn=self.collate``, ``data.num_workers`` workers (persistent when ``persistent`` and
        ``data.persistent_workers``), pinned memory on CUDA, and a ``generator`` seeded with ``seed + rank``
        (the trainer reseeds it every epoch, which makes worker seeds reproducible on resume).

        Args:
            dataset: The dataset.
            batch_size: Items per batch (not with ``batch_sampler``).
            sampler: Index sampler (e.g. ``DistributedSampler``); ``None`` = sequential.
            batch_sampler: Yields lists of indices (e.g. aspect-ratio grouping); replaces the two above.
            drop_last: Drop the last incomplete batch (not with ``batch_sampler``).
            persistent: Allow persistent workers (off for evaluation loaders).
        """
        workers = self.cfg.data.num_workers
        generator = torch.Generator()
        generator.manual_seed(self.cfg.seed + self.dist.rank)
        batching: dict[str, Any] = (
            {"batch_sampler": batch_sampler}
            if batch_sampler is not None
            else {"batch_size": batch_size, "sampler": sampler, "drop_last": drop_last}
        )
        return DataLoader(
            dataset,
            num_workers=workers,
            collate_fn=self.collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and workers > 0 and self.cfg.data.persistent_workers,
            generator=generator,
            **batching,
        )


def move_to(obj: Any, device: torch.device | str, non_blocking: bool = True) -> Any:
    """Move every tensor in nested lists/tuples/dicts to ``device`` (other values are returned unchanged)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return type(obj)({k: move_to(v, device, non_blocking) for k, v in obj.items()})  # type: ignore[call-arg]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to(v, device, non_blocking) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(move_to(v, device, non_blocking) for v in obj)
    return obj
