"""Image classification: any timm model (``se_plugin_*``, plain, a local pretrained file), ImageFolder data.

Selected by ``task: classification``. What the config keys mean here:

- ``data.format``: ``imagefolder`` (``data.root/<data.train_split>/<class>/*`` and ``.../<data.val_split>/...``,
  e.g. ImageNet's ``train``/``val``; ``data.train_images`` / ``data.val_images`` point elsewhere) or ``shapes``
  (the built-in one-dominant-shape set, generated into ``data.root`` on first use, see
  ``se_plugins.data.shapes_classification``). ``data.classes``: class names in label order; null = the sorted
  folder names. ``data.image_size`` (default 224), ``data.crop_scale``, ``data.crop_pct``, ``data.hflip_prob``:
  the ImageNet presets of ``se_plugins.data.classification.classification_transforms``.
- ``model.name``: a timm model name. With ``model.se.enabled`` the ``se_plugin_`` twin of the base architecture
  is built with the ``model.se`` options (``resnet50`` and ``se_plugin_resnet50`` both mean SE-ResNet-50),
  without it the plain base (the baseline); a model without an ``se_plugin_`` twin needs
  ``model.se.enabled: false``. ``model.kwargs`` go to ``timm.create_model`` (``drop_path_rate``, ``in_chans``...).
- ``model.pretrained_backbone``: a local weights file loaded through timm's pretrained mechanism (a timm/ImageNet
  state dict, or a checkpoint of this package): SE keys the file lacks keep their initialisation (identity: the
  model starts as the file's model), and the classifier is loaded when its shape fits ``num_classes``, otherwise
  re-initialised (timm's rule for a new head).
- ``model.num_classes``: null = the number of classes in the data.
- ``loss.label_smoothing``: cross-entropy label smoothing. ``eval.metric`` is not read: this task reports
  ``top1``, ``top5`` (k capped at the number of classes), ``mean_class_acc`` and, for up to 20 classes,
  ``acc/<class>``; each evaluation also writes ``<output_dir>/confusion_matrix.png``.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from se_plugins.engine.distributed import main_process_first
from se_plugins.engine.tasks.base import Task
from se_plugins.engine.tasks.worker_errors import ReportErrors, first_failure, raise_failure
from se_plugins.errors import CheckpointError, ConfigError, DataError, SEPluginsError

logger = logging.getLogger("se_plugins.engine")

SE_PLUGIN_PREFIX = "se_plugin_"
DEFAULT_IMAGE_SIZE = 224
MAX_PER_CLASS_METRICS = 20
"""``acc/<class>`` entries are reported for at most this many classes (ImageNet would log 1000 numbers)."""

_RESERVED_KWARGS = ("num_classes", "pretrained", "pretrained_cfg_overlay")


class ClassificationTask(Task):
    """Train and evaluate an image classifier (see the module docstring for the config keys).

    Attributes:
        class_names: Class names in label order, known once a data set is built (or from ``data.classes``).
    """

    main_metric = "top1"
    drop_last_train = True  # a last batch of one image breaks BatchNorm statistics

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        if cfg.data.format not in ("imagefolder", "shapes"):
            raise ConfigError(f"data.format: {cfg.data.format!r} is not a classification format (imagefolder, shapes)")
        if cfg.data.skip_bad_images:
            raise ConfigError("data.skip_bad_images: not supported by the classification task; remove the bad files")
        self.class_names: list[str] | None = list(cfg.data.classes) if cfg.data.classes else None

    @property
    def image_size(self) -> int:
        """The model's input side: ``data.image_size`` or 224."""
        return int(self.cfg.data.image_size or DEFAULT_IMAGE_SIZE)

    # ------------------------------------------------------------------------------------------ data

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """``(train, val)`` ImageFolder data sets of normalised ``(image [3, S, S], label)`` items."""
        train, val = self._dataset(train=True), self._dataset(train=False)
        if train.class_names != val.class_names:
            raise DataError(
                f"training classes {train.class_names} differ from validation classes {val.class_names}; "
                "set data.classes"
            )
        return train, val

    def build_val_dataset(self) -> Dataset:
        """The validation set alone (``se-plugins eval``, ``se-plugins excitations``)."""
        return self._dataset(train=False)

    def split_dir(self, train: bool) -> Path:
        """The ImageFolder root of the training or validation split (generating the shapes data if needed)."""
        d = self.cfg.data
        if not d.root and not (d.train_images if train else d.val_images):
            raise ConfigError("data.root: required (the folder holding the split folders)")
        if d.format == "shapes":
            return self._make_shapes() / ("train" if train else "val")
        explicit = d.train_images if train else d.val_images
        if explicit:
            path = Path(explicit)
            return path if path.is_absolute() or not d.root else Path(d.root) / path
        return Path(d.root) / (d.train_split if train else d.val_split)

    def _dataset(self, train: bool) -> ReportErrors:
        from se_plugins.data.classification import ImageFolderClassification, classification_transforms

        d = self.cfg.data
        transform = classification_transforms(
            train,
            self.image_size,
            crop_pct=d.crop_pct,
            scale=tuple(d.crop_scale),
            hflip_prob=d.hflip_prob,
        )
        dataset = ImageFolderClassification(self.split_dir(train), transform=transform, classes=d.classes or None)
        names = dataset.class_names
        if self.cfg.model.num_classes is not None and self.cfg.model.num_classes != len(names):
            raise ConfigError(
                f"model.num_classes: {self.cfg.model.num_classes} does not match the {len(names)} classes of "
                f"{dataset.root}; set it to null to take the number from the data"
            )
        self.class_names = names
        return ReportErrors(dataset)

    def _make_shapes(self) -> Path:
        from se_plugins.data.shapes_classification import make_shapes_classification

        s = self.cfg.data.shapes
        with main_process_first():
            try:
                return make_shapes_classification(
                    self.cfg.data.root, num_train=s.num_train, num_val=s.num_val, image_size=s.image_size, seed=s.seed
                )
            except ValueError as e:
                if isinstance(e, SEPluginsError):
                    raise
                raise ConfigError(f"data.shapes: {e}") from None

    def collate(self, batch: Sequence[Any]) -> Any:
        """``(images [N, 3, S, S], labels [N])``, or the first data error a worker reported."""
        failure = first_failure(batch)
        return failure if failure is not None else default_collate(batch)

    # ------------------------------------------------------------------------------------------ model

    @property
    def num_classes(self) -> int:
        """``model.num_classes`` or the number of classes in the data (reads the validation folder if needed)."""
        if self.cfg.model.num_classes is not None:
            return int(self.cfg.model.num_classes)
        if self.class_names is None:
            if self.cfg.data.format == "shapes":
                from se_plugins.data import SHAPE_CLASSES

                self.class_names = list(SHAPE_CLASSES)
            else:
                self.build_val_dataset()
        assert self.class_names is not None
        return len(self.class_names)

    def model_name(self) -> str:
        """The timm name built: the ``se_plugin_`` twin of ``model.name`` with SE, the plain base without."""
        import timm

        import se_plugins  # noqa: F401  (registers the se_plugin_* models)

        m = self.cfg.model
        base = m.name.removeprefix(SE_PLUGIN_PREFIX)
        name = SE_PLUGIN_PREFIX + base if m.se.enabled else base
        if not timm.is_model(name):
            if m.se.enabled and timm.is_model(base):
                raise ConfigError(
                    f"model.name: {base!r} has no se_plugin_ variant; set model.se.enabled false to train it plainly"
                )
            raise ConfigError(f"model.name: {m.name!r} is not a timm model")
        return name

    def build_model(self) -> nn.Module:
        """``timm.create_model`` as configured (see the module docstring)."""
        import timm

        m = self.cfg.model
        name = self.model_name()
        kwargs: dict[str, Any] = dict(OmegaConf.to_container(m.kwargs, resolve=True))  # type: ignore[arg-type]
        for key in _RESERVED_KWARGS:
            if key in kwargs:
                raise ConfigError(f"model.kwargs.{key}: set model.num_classes / model.pretrained_backbone instead")
        if m.se.enabled:
            kwargs.update(
                se_reduction=m.se.reduction,
                se_stages=None if m.se.stages is None else tuple(m.se.stages),
                se_position=m.se.position,
                se_init=m.se.init,
            )
        kwargs["num_classes"] = self.num_classes
        try:
            model = timm.create_model(name, **kwargs)
            if m.pretrained_backbone:
                model = self._create_pretrained(name, model, kwargs)
        except SEPluginsError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model ({name}): {' '.join(str(e).split())}") from None
        return model

    def _create_pretrained(self, name: str, plain: nn.Module, kwargs: dict[str, Any]) -> nn.Module:
        """Rebuild ``name`` with the weights of ``model.pretrained_backbone`` through timm's pretrained loading."""
        import timm
        from timm.models import load_state_dict

        path = Path(self.cfg.model.pretrained_backbone)
        if not path.is_file():
            raise ConfigError(f"model.pretrained_backbone: {path}: file not found")
        try:
            state = load_state_dict(str(path))
        except Exception as e:  # noqa: BLE001  (torch.load raises many types for a bad file)
            raise CheckpointError(f"{path}: cannot load weights ({' '.join(str(e).split())})") from None
        classifier = plain.pretrained_cfg.get("classifier") or "fc"
        head = state.get(f"{classifier}.weight")
        keep_head = head is not None and head.shape[0] == kwargs["num_classes"]
        overlay: dict[str, Any] = {"file": str(path)}
        if keep_head:
            overlay["num_classes"] = kwargs["num_classes"]  # timm keeps a head whose class count matches
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: does not fit {name}: {' '.join(str(e).split())[:300]}") from None
        logger.info(f"{name}: weights from {path} ({'with' if keep_head else 'new'} classifier head)")
        return model

    # ------------------------------------------------------------------------------------------ steps

    def prepare_batch(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of a loader batch on ``device`` (channels_last as configured); re-raises data errors."""
        raise_failure(batch)
        images, labels = batch
        images = images.to(device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(device, non_blocking=True)

    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """Cross-entropy with ``loss.label_smoothing`` (computed in float32 under AMP)."""
        images, labels = self.prepare_batch(batch, device)
        logits = model(images)
        return {"loss": F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.loss.label_smoothing)}

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """float32 logits ``[N, K]`` of normalised images ``[N, 3, S, S]`` (moved to the task's device)."""
        images, _ = self.prepare_batch((images, torch.zeros(len(images), dtype=torch.long)), self.device)
        with self.autocast():
            return model(images).float()

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """Top-1/top-5, mean class accuracy and per-class accuracy; counts summed over ranks."""
        from se_plugins.engine.metrics.classification import ClassificationMetric, save_confusion_matrix_png

        num_classes = self.num_classes
        names = self.class_names if self.class_names and len(self.class_names) == num_classes else None
        metric = ClassificationMetric(num_classes, topk=(1, 5), class_names=names)
        for batch in loader:
            images, labels = self.prepare_batch(batch, device)
            with self.autocast():
                logits = model(images)
            metric.update(logits, labels)
        metric.reduce()
        result = metric.compute()
        if self.dist.is_main:
            save_confusion_matrix_png(
                result["confusion"], metric.class_names, Path(self.cfg.output_dir) / "confusion_matrix.png"
            )
        out = {k: float(result[k]) for k in ("top1", "top5", "mean_class_acc")}
        if num_classes <= MAX_PER_CLASS_METRICS:
            out.update({f"acc/{name}": v for name, v in result["per_class_acc"].items()})
        return out

    def draw_predictions(self, model: nn.Module, dataset: Dataset, out_dir: str | os.PathLike, num: int) -> list[Path]:
        """One PNG grid of ``num`` validation images spread over the set (ImageFolder sorts them by class),
        titled with the true and the predicted class and its probability."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from se_plugins.atomic import atomic_write_bytes
        from se_plugins.data.classification import IMAGENET_MEAN, IMAGENET_STD

        num = min(num, len(dataset))  # type: ignore[arg-type]
        if num == 0:
            return []
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        cols = min(num, 8)
        rows = -(-num // cols)
        fig = Figure(figsize=(1.8 * cols, 2.0 * rows), dpi=100)
        FigureCanvasAgg(fig)
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        picks = [round(j * (len(dataset) - 1) / max(num - 1, 1)) for j in range(num)]  # type: ignore[arg-type]
        for i, index in enumerate(picks):
            image, label = dataset[index]
            probs = self.predict(model, image[None]).softmax(1)[0].cpu()
            pred = int(probs.argmax())
            ax = fig.add_subplot(rows, cols, i + 1)
            ax.imshow((image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
            colour = "tab:green" if pred == label else "tab:red"
            ax.set_title(f"{names[label]}\n→ {names[pred]} {probs[pred]:.2f}", fontsize=8, color=colour)
            ax.axis("off")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return [atomic_write_bytes(Path(out_dir) / "predictions.png", buffer.getvalue())]


__all__ = ["ClassificationTask"]
