"""The task-agnostic training loop: device, DDP, AMP, optimizer, LR schedule, checkpoints, logging.

An explicit loop in the style of torchvision's ``references/detection/train.py``. The task (see
``se_plugins.engine.tasks.base.Task``) supplies model, data, losses, evaluation and drawings; everything
else happens here.

Example:
    >>> cfg = load_config("configs/detection/shapes_fasterrcnn_se_r18.yaml")
    >>> metrics = Trainer(cfg).fit()                       # or fit(resume="runs/x/last.pth")
    >>> metrics = Trainer(cfg).evaluate("runs/x/best.pth")

Run directory (``cfg.output_dir``, written by rank 0 only): ``config.yaml``, ``metrics.jsonl``,
``tensorboard/``, ``last.pth`` (every ``train.checkpoint_every`` epochs and after the last one),
``best.pth`` (whenever ``task.main_metric`` improves), ``curves.png``, ``predictions/*.png``.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from se_plugins.atomic import remove_stale_temp_files
from se_plugins.engine.checkpoint import (
    CHECKPOINT_VERSION,
    capture_rng_state,
    config_differences,
    load_model_weights,
    needs_override,
    restore_rng_state,
    save_checkpoint,
)
from se_plugins.engine.config import config_to_yaml, save_config
from se_plugins.engine.distributed import (
    all_gather_object,
    broadcast_object,
    init_distributed,
    reduce_mean,
)
from se_plugins.engine.logging import MetricsLogger, plot_curves
from se_plugins.engine.tasks import Task, build_task
from se_plugins.errors import CheckpointError, DataError, SEPluginsError

logger = logging.getLogger("se_plugins.engine")


class NonFiniteLossError(SEPluginsError, RuntimeError):
    """Training stopped because a loss became NaN or infinite (the last good checkpoint is kept)."""


@dataclass
class TrainState:
    """Progress that a checkpoint records besides the module/optimizer states."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    best_metric: float | None = None  # best value of task.main_metric so far
    best_epoch: int | None = None  # the epoch that reached it
    metrics: dict[str, float] = field(default_factory=dict)  # latest evaluation


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of the training loader's generator in ``epoch`` (worker seeds derive from it)."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**63


def lr_lambda(train_cfg: DictConfig, iters_per_epoch: int) -> Callable[[int], float]:
    """The LR factor of each optimizer step: ``lr(step) = train.lr * f(step)``, ``step`` counted from 0.

    ``f = warmup(step) * decay(step)`` where

    - ``warmup(s) = warmup_factor * (1 - a) + a`` with ``a = s / warmup_iters`` while ``s < warmup_iters``,
      else 1;
    - multistep: ``decay(s) = gamma ** (number of milestones m with s >= m * iters_per_epoch)``;
    - cosine: ``decay(s) = min_lr_factor + (1 - min_lr_factor) * (1 + cos(pi * s / total)) / 2`` with
      ``total = epochs * iters_per_epoch`` (constant at ``min_lr_factor`` after ``total``).
    """
    warmup_iters, warmup_factor = train_cfg.warmup_iters, train_cfg.warmup_factor
    milestones = sorted(m * iters_per_epoch for m in train_cfg.milestones)
    total = max(1, train_cfg.epochs * iters_per_epoch)
    gamma, min_factor, cosine = train_cfg.gamma, train_cfg.min_lr_factor, train_cfg.scheduler == "cosine"

    def factor(step: int) -> float:
        warmup = 1.0
        if step < warmup_iters:
            alpha = step / warmup_iters
            warmup = warmup_factor * (1 - alpha) + alpha
        if cosine:
            decay = min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        else:
            decay = gamma ** bisect.bisect_right(milestones, step)
        return warmup * decay

    return factor


def warmup_warning(train_cfg: DictConfig, iters_per_epoch: int) -> str | None:
    """The start-of-run warning for a warmup that covers all (or at least half) of the training, else None.

    With ``warmup_iters >= epochs * iters_per_epoch`` the LR never reaches ``train.lr``; the message gives the
    highest LR factor the schedule reaches.
    """
    warmup, total = int(train_cfg.warmup_iters), max(1, int(train_cfg.epochs) * iters_per_epoch)
    if warmup <= 0 or 2 * warmup < total:
        return None
    where = f"train.warmup_iters {warmup} >= {'the' if warmup >= total else '50 % of the'} {total} training iterations"
    where += f" ({train_cfg.epochs} epochs x {iters_per_epoch} iterations)"
    if warmup >= total:
        factor = lr_lambda(train_cfg, iters_per_epoch)
        peak = max(factor(step) for step in range(total)) * float(train_cfg.lr)
        return f"{where}: the LR never reaches train.lr {train_cfg.lr:g} (peak {peak:.3g})"
    return f"{where}: most of the training runs below train.lr {train_cfg.lr:g}"


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None) -> list[dict[str, Any]]:
    """Trainable parameters split into weights (``weight_decay``) and norm weights/biases (1-D tensors).

    ``norm_weight_decay=None`` puts every parameter in one group with ``weight_decay``.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if norm_weight_decay is None:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": norm_weight_decay},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, train_cfg: DictConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov off) or AdamW over ``param_groups``; ``train.momentum`` is AdamW's beta1."""
    groups = param_groups(model, train_cfg.weight_decay, train_cfg.norm_weight_decay)
    if not groups:
        raise SEPluginsError("the model has no trainable parameters")
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train_cfg.lr, momentum=train_cfg.momentum)
    return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=(train_cfg.momentum, 0.999))


class Trainer:
    """Train and evaluate one task as configured.

    Args:
        cfg: A config validated by ``load_config``.
        task: The task to run; ``None`` builds the one named by ``cfg.task``.

    Attributes:
        model: The unwrapped model after ``fit``/``evaluate`` (``None`` before).
        device: The device in use; ``dist``: this process's ``DistInfo``.
    """

    def __init__(self, cfg: DictConfig, task: Task | None = None) -> None:
        self.cfg = cfg
        self.dist, self.device = init_distributed(cfg.device)
        self.task = task if task is not None else build_task(cfg)
        if not isinstance(self.task.main_metric, str) or not self.task.main_metric:
            raise TypeError(f"{type(self.task).__name__}.main_metric must name a metric of its evaluate()")
        self.task.device, self.task.dist = self.device, self.dist
        self.output_dir = Path(cfg.output_dir)
        self.model: nn.Module | None = None

    # ------------------------------------------------------------------------------------------ public

    def fit(self, resume: str | os.PathLike | None = None, resume_override: bool = False) -> dict[str, float]:
        """Train ``train.epochs`` epochs (continuing from ``resume``, a ``last.pth``); return final metrics.

        Resuming restores model, optimizer, scheduler, scaler, epoch/step counters, the best metric and every
        rank's RNG states, and replays the data order (a function of seed and epoch), so the result equals an
        uninterrupted run (bit-exact on CPU with ``data.num_workers=0`` or ``persistent_workers=false``).

        The config is compared with the one saved in the checkpoint and the differences are logged. Keys of
        ``RESUME_FREE_KEYS`` (more ``train.epochs``, output/logging/loader settings) may change; any other change
        (``train.lr``, the schedule, the data, the model...) is refused unless ``resume_override``, which applies
        the new values (learning rate, schedule, weight decay, momentum) from the resumed step on.

        Raises:
            NonFiniteLossError: a loss became NaN/inf (``last.pth`` from the last finished epoch is kept).
            CheckpointError: ``resume`` is missing, corrupt or does not fit the model, ``train.optimizer`` changed,
                or other keys changed without ``resume_override``.
        """
        cfg, tcfg = self.cfg, self.cfg.train
        seed_everything(cfg.seed + self.dist.rank)
        train_set, val_set = self.task.build_datasets()
        self._check_data(train_set, val_set)
        model = self._build_model()
        train_loader = self.task.build_train_loader(train_set, self.dist.enabled)
        val_loader = self.task.build_val_loader(val_set, self.dist.enabled)
        iters_per_epoch = min(len(train_loader), tcfg.max_iters_per_epoch or len(train_loader))
        if iters_per_epoch == 0:
            raise DataError(f"the training data yields no batch ({len(train_set)} items, batch_size {tcfg.batch_size})")

        warning = warmup_warning(tcfg, iters_per_epoch)
        if warning and self.dist.is_main:
            logger.warning(warning)
        optimizer = build_optimizer(model, tcfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg, iters_per_epoch))
        use_scaler = tcfg.amp and self.device.type == "cuda" and tcfg.amp_dtype == "float16"
        scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        state, rng_states = TrainState(), None
        if resume is not None:
            state, rng_states = self._load_resume(resume, model, optimizer, scheduler, scaler, resume_override)
        ddp_model = self._wrap_ddp(model)

        if self.dist.is_main:
            stale = remove_stale_temp_files(self.output_dir)
            if stale:
                logger.info(
                    f"removed {len(stale)} temporary files of interrupted writes from {self.output_dir}: "
                    + ", ".join(p.name for p in stale)
                )
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.output_dir / "config.yaml")
        mlog = MetricsLogger(
            self.output_dir,
            enabled=self.dist.is_main,
            tensorboard=tcfg.tensorboard,
            resume_step=state.step if resume is not None else None,
        )
        self._log_start(model, len(train_set), len(val_set), iters_per_epoch, state)
        if rng_states is not None:
            self._restore_rng(rng_states, state.epoch)
        try:
            for epoch in range(state.epoch + 1, tcfg.epochs + 1):
                self._train_one_epoch(
                    ddp_model, train_loader, optimizer, scheduler, scaler, epoch, iters_per_epoch, state, mlog
                )
                state.epoch = epoch
                last = epoch == tcfg.epochs
                improved = False
                if epoch % tcfg.eval_every == 0 or last:
                    state.metrics = self._run_evaluation(model, val_loader)
                    mlog.log({"type": "eval", "epoch": epoch, "step": state.step, **state.metrics})
                    improved = self._update_best(state)
                    logger.info(self._metrics_line(epoch, state))
                if self.dist.is_main:
                    plot_curves(mlog.path, self.output_dir / "curves.png", self.task.main_metric)
                    if improved:
                        save_checkpoint(self._checkpoint(model, state), self.output_dir / "best.pth")
                if epoch % tcfg.checkpoint_every == 0 or last:
                    rng = all_gather_object(capture_rng_state())  # collective: every rank takes part
                    if self.dist.is_main:
                        full = self._checkpoint(model, state, optimizer, scheduler, scaler, rng)
                        save_checkpoint(full, self.output_dir / "last.pth")
            if not state.metrics:  # resumed from a checkpoint of the final epoch without metrics
                state.metrics = self._run_evaluation(model, val_loader)
            if self.dist.is_main and tcfg.num_vis > 0:
                self._draw(model, val_set, self.output_dir / "predictions", tcfg.num_vis)
        finally:
            mlog.close()
        return dict(state.metrics)

    def evaluate(
        self, checkpoint: str | os.PathLike, num_vis: int = 0, vis_dir: str | os.PathLike | None = None
    ) -> dict[str, float]:
        """Evaluate the weights in ``checkpoint`` (a ``.pth`` of this package or a bare state dict).

        Args:
            checkpoint: Checkpoint file.
            num_vis: Also draw predictions on this many validation images (rank 0).
            vis_dir: Where to put them (default: ``<output_dir>/predictions``).

        Returns:
            The task's metrics (on every rank).
        """
        seed_everything(self.cfg.seed + self.dist.rank)
        val_set = self.task.build_val_dataset()
        model = self.task.build_model()
        load_model_weights(model, checkpoint)
        model = self._to_device(model)
        val_loader = self.task.build_val_loader(val_set, self.dist.enabled)
        metrics = self._run_evaluation(model, val_loader)
        if self.dist.is_main and num_vis > 0:
            self._draw(model, val_set, Path(vis_dir) if vis_dir else self.output_dir / "predictions", num_vis)
        return metrics

    # ------------------------------------------------------------------------------------------ the loop

    def _train_one_epoch(
        self,
        model: nn.Module,
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        epoch: int,
        iters: int,
        state: TrainState,
        mlog: MetricsLogger,
    ) -> None:
        tcfg = self.cfg.train
        model.train()
        self._set_epoch(loader, epoch)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        epoch_sums: dict[str, float] = defaultdict(float)
        window: dict[str, float] = defaultdict(float)
        window_n, t_window, t_epoch = 0, time.perf_counter(), time.perf_counter()
        show_bar = self.dist.is_main and sys.stderr.isatty()
        bar = tqdm(total=iters, desc=f"epoch {epoch}/{tcfg.epochs}", disable=not show_bar, leave=False)
        for i, batch in enumerate(_take(loader, iters), start=1):
            lr = optimizer.param_groups[0]["lr"]
            with self.task.autocast():
                losses = self.task.train_step(model, batch, self.device)
            if "loss" not in losses:
                raise KeyError(f"{type(self.task).__name__}.train_step must return a 'loss' entry")
            values = {k: float(v) for k, v in reduce_mean({k: v.detach() for k, v in losses.items()}).items()}
            if not math.isfinite(values["loss"]):
                self._stop_non_finite(epoch, i, state, values, mlog)

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            if tcfg.clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, tcfg.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            state.step += 1

            for k, v in values.items():
                epoch_sums[k] += v
                window[k] += v
            window_n += 1
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
            if i % tcfg.log_every == 0 or i == iters:
                record = {"type": "train", "epoch": epoch, "iter": i, "step": state.step, "lr": lr}
                record.update({k: v / window_n for k, v in window.items()})
                record["time"] = (time.perf_counter() - t_window) / window_n
                if self.device.type == "cuda":
                    record["mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
                mlog.log(record)
                if not show_bar:
                    logger.info(_train_line(record, tcfg.epochs, iters))
                window.clear()
                window_n, t_window = 0, time.perf_counter()
        bar.close()
        summary = {k: v / iters for k, v in epoch_sums.items()}
        epoch_time = time.perf_counter() - t_epoch
        mlog.log({"type": "epoch", "epoch": epoch, "step": state.step, "lr": lr, **summary, "time": epoch_time})

    def _stop_non_finite(
        self, epoch: int, it: int, state: TrainState, values: dict[str, float], mlog: MetricsLogger
    ) -> None:
        mlog.log({"type": "nonfinite", "epoch": epoch, "iter": it, "step": state.step, **values})
        last = self.output_dir / "last.pth"
        kept = str(last) if last.is_file() else "none (no epoch finished)"
        parts = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch} iter {it} ({parts}); last good checkpoint: {kept}")

    def _run_evaluation(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        model.eval()
        try:
            with torch.no_grad():
                metrics = self.task.evaluate(model, loader, self.device)
        finally:
            model.train()
        metrics = broadcast_object(metrics)
        main = self.task.main_metric
        if not isinstance(metrics, dict) or main not in metrics:
            got = sorted(metrics) if isinstance(metrics, dict) else type(metrics).__name__
            raise KeyError(f"{type(self.task).__name__}.evaluate returned no '{main}' (got {got})")
        return {k: float(v) for k, v in metrics.items()}

    def _update_best(self, state: TrainState) -> bool:
        value = state.metrics[self.task.main_metric]
        if math.isfinite(value) and (state.best_metric is None or value > state.best_metric):
            state.best_metric, state.best_epoch = value, state.epoch
            return True
        return False

    def _draw(self, model: nn.Module, dataset: Any, out_dir: Path, num: int) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.eval()
        try:
            with torch.no_grad():
                files = self.task.draw_predictions(model, dataset, out_dir, num)
        finally:
            model.train()
        logger.info(f"drew {len(files)} prediction images into {out_dir}")
        return files

    # ------------------------------------------------------------------------------------------ set-up

    def _check_data(self, train_set: Any, val_set: Any) -> None:
        """``check-data``'s fast part (no image decoded): every image file exists; log a one-line summary.

        Raises:
            DataError: the first problem found (the count of all of them follows it).
        """
        from se_plugins.data.check import check_datasets, first_error, summary_line

        reports = check_datasets({"train": train_set, "val": val_set}, decode=False)
        problem = first_error(reports)
        if problem is not None:
            raise DataError(f"{problem}; run se-plugins check-data CONFIG for a full report")
        if self.dist.is_main and any(r.kind != "unknown" for r in reports.values()):
            logger.info(summary_line(reports))
            for report in reports.values():
                for note in report.notes:
                    logger.info(f"data ({report.split}): {note}")

    def _build_model(self) -> nn.Module:
        model = self.task.build_model()
        if self.dist.enabled and self.cfg.train.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return self._to_device(model)

    def _to_device(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        return model

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=self.cfg.train.find_unused_parameters
        )

    def _set_epoch(self, loader: DataLoader, epoch: int) -> None:
        """Make the epoch's data order and worker seeds a function of (seed, rank, epoch)."""
        for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch - 1)
        if loader.generator is not None:
            loader.generator.manual_seed(epoch_seed(self.cfg.seed, self.dist.rank, epoch))

    # ------------------------------------------------------------------------------------------ checkpoints

    def _checkpoint(
        self,
        model: nn.Module,
        state: TrainState,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: torch.amp.GradScaler | None = None,
        rng: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        ckpt: dict[str, Any] = {
            "format_version": CHECKPOINT_VERSION,
            "model": model.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "main_metric": self.task.main_metric,
            "metrics": dict(state.metrics),
            "config": config_to_yaml(self.cfg),
            "world_size": self.dist.world_size,
        }
        if optimizer is not None:
            ckpt.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else {},
                rng=rng or [],
            )
        return ckpt

    def _load_resume(
        self,
        path: str | os.PathLike,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        override: bool = False,
    ) -> tuple[TrainState, list[dict[str, Any]]]:
        ckpt = load_model_weights(model, path)
        missing = [k for k in ("optimizer", "scheduler", "epoch", "step") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)}); resume from last.pth")
        changed = self._check_resume_config(path, ckpt, optimizer, override)
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler.is_enabled() and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path}: optimizer/scheduler state does not fit: {e}") from None
        if changed:  # --resume-override: the new lr / schedule / weight decay / momentum from this step on
            for group, new in zip(optimizer.param_groups, fresh, strict=True):
                group.update(new)
            scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
            factors = [fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
            for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, factors, strict=True):
                group["lr"] = base * factor
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        state = TrainState(
            epoch=int(ckpt["epoch"]),
            step=int(ckpt["step"]),
            best_metric=ckpt.get("best_metric"),
            best_epoch=ckpt.get("best_epoch"),
            metrics=dict(ckpt.get("metrics") or {}),
        )
        logger.info(f"resuming from {path}: epoch {state.epoch} done, step {state.step}")
        return state, list(ckpt.get("rng") or [])

    def _check_resume_config(
        self, path: str | os.PathLike, ckpt: dict[str, Any], optimizer: torch.optim.Optimizer, override: bool
    ) -> list[tuple[str, Any, Any]]:
        """Compare the checkpoint's config with this one; return the changes that ``override`` lets through.

        Raises:
            CheckpointError: ``train.optimizer`` changed, the optimizer state has other hyper-parameters than
                this optimizer, or keys outside ``RESUME_FREE_KEYS`` changed and ``override`` is False.
        """
        saved = ckpt.get("config")
        diffs: list[tuple[str, Any, Any]] = []
        if isinstance(saved, str):
            try:
                old = yaml.safe_load(saved)
            except yaml.YAMLError:
                old = None
            if isinstance(old, dict):
                diffs = config_differences(old, yaml.safe_load(config_to_yaml(self.cfg)))
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
        if diffs:
            logger.info(f"config differs from the checkpoint's ({path}): {shown}")
        for key, a, b in diffs:
            if key == "train.optimizer":
                raise CheckpointError(
                    f"{path}: train.optimizer changed ({a} -> {b}): the checkpoint holds {a} state, which {b} cannot "
                    f"continue; resume with train.optimizer={a}, or start a new run"
                )
        groups = ckpt["optimizer"].get("param_groups") if isinstance(ckpt["optimizer"], dict) else None
        if groups and optimizer.param_groups:
            theirs = set(groups[0]) - {"params"}
            ours = set(optimizer.param_groups[0]) - {"params", "initial_lr"}
            if not ours <= theirs:
                raise CheckpointError(
                    f"{path}: the optimizer state is not for {type(optimizer).__name__} (it lacks "
                    f"{', '.join(sorted(ours - theirs))}); resume with the optimizer it was trained with"
                )
        strict = [(k, a, b) for k, a, b in diffs if needs_override(k)]
        if strict and not override:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in strict)
            raise CheckpointError(
                f"{path}: the config differs from the checkpoint's ({listed}), so the resumed run would not "
                "continue the same training; undo the change, or pass --resume-override to apply it"
            )
        if strict:
            logger.warning(f"--resume-override: applying {len(strict)} changed keys from step {ckpt['step']} on")
        return strict

    def _restore_rng(self, rng_states: list[dict[str, Any]], epoch: int) -> None:
        if len(rng_states) == self.dist.world_size:
            restore_rng_state(rng_states[self.dist.rank])
        else:  # another world size: continue reproducibly, but not bit-identical to the original run
            logger.warning(
                f"checkpoint RNG states are for {len(rng_states)} processes, this run has "
                f"{self.dist.world_size}: reseeding"
            )
            seed_everything(self.cfg.seed + self.dist.rank + 1_000_003 * epoch)

    # ------------------------------------------------------------------------------------------ messages

    def _log_start(self, model: nn.Module, n_train: int, n_val: int, iters: int, state: TrainState) -> None:
        if not self.dist.is_main:
            return
        n_params = sum(p.numel() for p in model.parameters())
        n_train_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(
            f"{type(self.task).__name__} on {self.device} x{self.dist.world_size}: "
            f"{n_params / 1e6:.2f}M params ({n_train_params / 1e6:.2f}M trainable), "
            f"{n_train} train / {n_val} val items, {iters} iters/epoch, "
            f"epochs {state.epoch + 1}..{self.cfg.train.epochs}, output {self.output_dir}"
        )

    def _metrics_line(self, epoch: int, state: TrainState) -> str:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in state.metrics.items())
        best = f" (best {self.task.main_metric} {state.best_metric:.4f} @ epoch {state.best_epoch})"
        return f"epoch {epoch}/{self.cfg.train.epochs} eval: {shown}" + (best if state.best_metric is not None else "")


def _take(loader: DataLoader, n: int) -> Iterator[Any]:
    """The first ``n`` batches of a fresh iterator of ``loader`` (stops creating batches after ``n``)."""
    for i, batch in enumerate(loader):
        yield batch
        if i + 1 >= n:
            return


def _train_line(record: dict[str, Any], epochs: int, iters: int) -> str:
    losses = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("loss"))
    return (
        f"epoch {record['epoch']}/{epochs} [{record['iter']}/{iters}] lr {record['lr']:.3e} {losses} "
        f"{record['time']:.3f} s/it"
    )
