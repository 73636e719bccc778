"""What the SE gates learned: per-class, per-block excitation statistics and the paper's plots (Hu et al., Fig. 6/7).

The model runs over the validation set with a forward hook on the ``fc2`` layer of every SE module, which gives the
gate logits ``z`` of each image: the recorder keeps ``sigmoid(z)`` (the activation *before* ``gate_gain``, in [0, 1]
for every init, so models with identity and random init compare fairly; this is what the paper plots) and the applied
gate ``gate_gain * sigmoid(z)`` (exactly 1 everywhere for an untrained identity-initialised SE). While recording,
SE blocks run their plain (unfused) form, which calls the SE modules and so their hooks; the fused form computes
the same gates up to float rounding. Nothing in the model changes.

Per block, the statistics are aggregated per class (classification: the image's label; detection and segmentation:
every class present in the image, background excluded) and over all images: the mean activation per channel, its
spread (std over images), how far the block is from the identity (mean ``|gate - 1|``) and how much the classes
differ (``class_spread``: the std over classes of the per-class mean activation, averaged over channels). The paper
observes class-agnostic early blocks and class-specific late ones.

Example:
    >>> result = run_excitations(load_config("configs/classification/shapes_se_resnet10t.yaml"),
    ...                          "runs/shapes_se_resnet10t/best.pth")
    >>> result.mean["layer4.0.se"].shape        # (classes + "all", channels)
    >>> result.distance_from_identity           # {block: mean |gate - 1|}

Command line: ``se-plugins excitations CONFIG --checkpoint CKPT [--blocks ...] [--classes ...]`` writes
``excitations.png`` and ``excitations.json`` into ``<output_dir>/excitations/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from se_plugins import SqueezeExcite, se_modules
from se_plugins.errors import ConfigError, SEPluginsError

ALL = "all"
"""Name of the row aggregating every image (after the class rows)."""

DEFAULT_PLOT_BLOCKS = 6
"""Blocks drawn when ``--blocks`` is not given: this many, evenly spaced from the first to the last."""


class GateRecorder:
    """Context manager recording the per-image gates of every SE module of ``model``.

    Args:
        model: A model with SE modules (``se_plugins.se_modules(model)`` is not empty).

    Attributes:
        names: The SE module names, in model order.
        activations: ``{name: list of float32 [N, C] tensors}`` of ``sigmoid(z)`` (before ``gate_gain``).
        gates: ``{name: list of float32 [N, C] tensors}`` of the applied gate ``gate_gain * sigmoid(z)``.

    Raises:
        SEPluginsError: the model has no SE module.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules: dict[str, SqueezeExcite] = se_modules(model)
        if not self.modules:
            raise SEPluginsError(f"{type(model).__name__} has no SE module to analyse (is model.se.enabled false?)")
        self.names = list(self.modules)
        self.activations: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self.gates: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self._handles: list[Any] = []
        self._fused: dict[nn.Module, bool] = {}

    def __enter__(self) -> GateRecorder:
        for module in self.model.modules():  # plain form: the SE modules (and their fc2) are called
            if isinstance(getattr(module, "se_fused", None), bool):
                self._fused[module] = module.se_fused
                module.se_fused = False
        for name, se in self.modules.items():
            self._handles.append(se.fc2.register_forward_hook(self._hook(name, se)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, fused in self._fused.items():
            module.se_fused = fused
        self._fused.clear()

    def _hook(self, name: str, se: SqueezeExcite) -> Any:
        def record(module: nn.Module, inputs: Any, logits: torch.Tensor) -> None:
            activation = torch.sigmoid(logits)
            gate = activation * se.gate_gain  # the same operations as SqueezeExcite.forward
            self.activations[name].append(activation.flatten(1).detach().float().cpu())
            self.gates[name].append(gate.flatten(1).detach().float().cpu())

        return record

    def stacked(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(activations, gates)`` as ``{name: [num_images, C]}`` tensors."""
        act = {n: torch.cat(v) if v else torch.zeros(0, self.modules[n].channels) for n, v in self.activations.items()}
        gates = {n: torch.cat(v) if v else torch.zeros(0, self.modules[n].channels) for n, v in self.gates.items()}
        return act, gates


@dataclass
class ExcitationResult:
    """Per-block gate statistics. Row ``i < K`` of each array is class ``class_names[i]``, the last row is "all".

    Attributes:
        blocks: SE module names in depth order.
        class_names: The K class names.
        counts: Images per class and in total, ``(K + 1,)`` (an image with several classes counts for each).
        mean: ``{block: (K + 1, C)}`` mean activation ``sigmoid(z)`` per channel (NaN for a class without images).
        std: ``{block: (K + 1, C)}`` its std over images.
        gate_mean: ``{block: (K + 1, C)}`` mean applied gate per channel.
        distance_from_identity: ``{block: mean |gate - 1|}`` over all images and channels.
        class_spread: ``{block: mean over channels of the std over classes of the class means}`` (classes with
            images only; 0 with fewer than two).
        activations / gates: the per-image ``[N, C]`` arrays (``keep_images=True`` only), with ``image_labels``.
    """

    blocks: list[str]
    class_names: list[str]
    counts: np.ndarray
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    gate_mean: dict[str, np.ndarray]
    distance_from_identity: dict[str, float]
    class_spread: dict[str, float]
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    gates: dict[str, np.ndarray] = field(default_factory=dict)
    image_labels: list[list[int]] = field(default_factory=list)

    @property
    def row_names(self) -> list[str]:
        """Names of the rows of ``mean``/``std``: the classes, then "all"."""
        return [*self.class_names, ALL]

    def to_json(self) -> dict[str, Any]:
        """The statistics as plain JSON (NaN as null); per-image arrays are left out."""

        def plain(a: np.ndarray) -> list:
            return [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in np.atleast_2d(a)]

        return {
            "class_names": self.class_names,
            "rows": self.row_names,
            "counts": [int(c) for c in self.counts],
            "blocks": [
                {
                    "name": b,
                    "channels": int(self.mean[b].shape[1]),
                    "distance_from_identity": self.distance_from_identity[b],
                    "class_spread": self.class_spread[b],
                    "mean": plain(self.mean[b]),
                    "std": plain(self.std[b]),
                    "gate_mean": plain(self.gate_mean[b]),
                }
                for b in self.blocks
            ],
        }


def excitation_stats(
    activations: dict[str, torch.Tensor],
    gates: dict[str, torch.Tensor],
    image_labels: Sequence[Sequence[int]],
    class_names: Sequence[str],
    keep_images: bool = False,
) -> ExcitationResult:
    """Aggregate recorded ``[N, C]`` activations and gates per class and per block.

    Args:
        activations: ``{block: [N, C]}`` ``sigmoid(z)`` per image (``GateRecorder.stacked()``).
        gates: ``{block: [N, C]}`` applied gates.
        image_labels: For each of the N images the class indices (0..K-1) it shows.
        class_names: The K class names.
        keep_images: Also keep the per-image arrays in the result.
    """
    num_classes = len(class_names)
    n = len(image_labels)
    member = np.zeros((num_classes + 1, n), dtype=bool)
    for i, labels in enumerate(image_labels):
        for k in labels:
            if not 0 <= k < num_classes:
                raise ValueError(f"excitation_stats: image {i} has class {k}, outside 0..{num_classes - 1}")
            member[k, i] = True
    member[num_classes] = True
    counts = member.sum(1)
    mean, std, gate_mean, distance, spread = {}, {}, {}, {}, {}
    for block, act in activations.items():
        a, g = act.double().numpy(), gates[block].double().numpy()
        if a.shape[0] != n:
            raise ValueError(f"excitation_stats: {block} has {a.shape[0]} images, the labels {n}")
        rows_m, rows_s, rows_g = [], [], []
        for k in range(num_classes + 1):
            sel = member[k]
            if sel.any():
                rows_m.append(a[sel].mean(0))
                rows_s.append(a[sel].std(0))
                rows_g.append(g[sel].mean(0))
            else:
                rows_m.append(np.full(a.shape[1], np.nan))
                rows_s.append(np.full(a.shape[1], np.nan))
                rows_g.append(np.full(a.shape[1], np.nan))
        mean[block], std[block], gate_mean[block] = np.stack(rows_m), np.stack(rows_s), np.stack(rows_g)
        distance[block] = float(np.abs(g - 1.0).mean()) if n else float("nan")
        present = counts[:num_classes] > 0
        spread[block] = float(mean[block][:num_classes][present].std(0).mean()) if present.sum() >= 2 else 0.0
    result = ExcitationResult(
        blocks=list(activations),
        class_names=list(class_names),
        counts=counts,
        mean=mean,
        std=std,
        gate_mean=gate_mean,
        distance_from_identity=distance,
        class_spread=spread,
    )
    if keep_images:
        result.activations = {b: v.numpy() for b, v in activations.items()}
        result.gates = {b: v.numpy() for b, v in gates.items()}
        result.image_labels = [list(labels) for labels in image_labels]
    return result


# ----------------------------------------------------------------------------------------- running a task


def iter_task_batches(task: Any, model: nn.Module, loader: Iterable) -> Iterator[list[list[int]]]:
    """Forward each validation batch through ``model`` the way ``task`` evaluates; yield its images' classes.

    Classification: the label. Detection: the distinct box labels (1..K become 0..K-1). Segmentation: the distinct
    mask values other than background (0) and ignore (255), minus one.
    """
    from se_plugins.engine.tasks.classification import ClassificationTask
    from se_plugins.engine.tasks.detection import DetectionTask
    from se_plugins.engine.tasks.segmentation import SegmentationTask

    for batch in loader:
        if isinstance(task, ClassificationTask):
            images, labels = task.prepare_batch(batch, task.device)
            with task.autocast():
                model(images)
            yield [[int(k)] for k in labels.cpu()]
        elif isinstance(task, DetectionTask):
            images, targets = batch
            task.predict(model, images, task.device)
            yield [sorted({int(k) - 1 for k in t["labels"]}) for t in targets]
        elif isinstance(task, SegmentationTask):
            images, masks = batch
            for image in images:  # one at a time: validation images may differ in size
                task.predict(model, image)
            yield [sorted({int(v) - 1 for v in mask.unique() if 0 < int(v) < 255}) for mask in masks]
        else:
            raise SEPluginsError(f"excitations: task {type(task).__name__} is not supported")


def collect_excitations(
    task: Any, model: nn.Module, loader: Iterable, max_images: int | None = None, keep_images: bool = False
) -> ExcitationResult:
    """Run ``model`` (eval mode, no grad) over ``loader`` as ``task`` does and aggregate its SE gates.

    Args:
        task: A built-in task (classification, detection, segmentation) whose ``device`` is set.
        model: The task's model with SE, on ``task.device``.
        loader: The task's validation loader.
        max_images: Stop after at least this many images (whole batches); ``None`` = all.
        keep_images: Keep the per-image arrays in the result.
    """
    was_training = model.training
    model.eval()
    labels: list[list[int]] = []
    try:
        with GateRecorder(model) as recorder, torch.no_grad():
            for batch_labels in iter_task_batches(task, model, loader):
                labels.extend(batch_labels)
                if max_images is not None and len(labels) >= max_images:
                    break
    finally:
        model.train(was_training)
    activations, gates = recorder.stacked()
    names = _task_class_names(task)
    return excitation_stats(activations, gates, labels, names, keep_images=keep_images)


def _task_class_names(task: Any) -> list[str]:
    from se_plugins.engine.tasks.segmentation import SegmentationTask

    names = list(task.class_names or [])
    if isinstance(task, SegmentationTask):
        names = names[1:]  # background is not a class of the analysis
    return names


def run_excitations(
    cfg: Any,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    blocks: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    max_images: int | None = None,
    config_path: str | os.PathLike | None = None,
) -> ExcitationResult:
    """Load ``checkpoint`` into the config's model, analyse its gates on the validation set, write PNG + JSON.

    Args:
        cfg: A validated config (``se_plugins.engine.config.load_config``).
        checkpoint: Weights of the config's model (a checkpoint of this package or a bare state dict).
        out_dir: Where ``excitations.png`` / ``excitations.json`` go (default ``<output_dir>/excitations``).
        blocks: Blocks to draw (names, with or without the ``.se`` suffix, or indices in depth order); default
            ``DEFAULT_PLOT_BLOCKS`` spread over the depth. Every block is in the JSON and the summary panel.
        classes: Classes to draw (names or indices); default all.
        max_images: Analyse at most about this many validation images.
        config_path: The config file (recorded in the JSON).
    """
    from se_plugins.atomic import atomic_write_text
    from se_plugins.engine.checkpoint import load_model_weights
    from se_plugins.engine.distributed import resolve_device
    from se_plugins.engine.tasks import build_task

    task = build_task(cfg)
    task.device = resolve_device(cfg.device)
    dataset = task.build_val_dataset()
    model = task.build_model()
    load_model_weights(model, checkpoint)
    model.to(task.device)
    loader = task.build_val_loader(dataset, distributed=False)
    result = collect_excitations(task, model, loader, max_images=max_images)
    chosen_blocks = select_blocks(result.blocks, blocks)
    chosen_classes = select_classes(result.class_names, classes)
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / "excitations"
    report = {"config": str(config_path) if config_path else None, "checkpoint": str(checkpoint), **result.to_json()}
    report["plotted_blocks"], report["plotted_classes"] = chosen_blocks, chosen_classes
    atomic_write_text(out / "excitations.json", json.dumps(report, indent=1) + "\n")
    plot_excitations(result, out / "excitations.png", chosen_blocks, chosen_classes, title=str(checkpoint))
    return result


def select_blocks(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Resolve ``--blocks`` (SE module names, block names, or indices) to SE module names; default: evenly spread."""
    if not wanted:
        if len(available) <= DEFAULT_PLOT_BLOCKS:
            return list(available)
        picks = np.linspace(0, len(available) - 1, DEFAULT_PLOT_BLOCKS).round().astype(int)
        return [available[i] for i in sorted(set(picks.tolist()))]
    chosen = []
    for item in wanted:
        name = _resolve(item, list(available), lambda s: _block_se_names(s, available))
        if name is None:
            raise ConfigError(f"--blocks: {item!r} is not an SE block (one of {', '.join(available)}, or 0..)")
        chosen.append(name)
    return chosen


def select_classes(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Resolve ``--classes`` (names or indices) to class names; default: all."""
    if not wanted:
        return list(available)
    chosen = []
    for item in wanted:
        name = _resolve(item, list(available), lambda s: [])
        if name is None:
            raise ConfigError(f"--classes: {item!r} is not a class (one of {', '.join(available)}, or 0..)")
        chosen.append(name)
    return chosen


def _block_se_names(block: str, available: Sequence[str]) -> list[str]:
    """The SE module of the block named ``block``: ``<block>.se``, or the block's own attention slot (``attn``,
    ``attn2``, ``attn_last``: one more name component); a name given with ``.se`` also finds that block's."""
    block = block.removesuffix(".se")
    return [name for name in available if name.rpartition(".")[0] == block]


def _resolve(item: str, available: list[str], variants: Any) -> str | None:
    if item in available:
        return item
    for v in variants(item):
        if v in available:
            return v
    with contextlib.suppress(ValueError):
        index = int(item)
        if -len(available) <= index < len(available):
            return available[index]
    return None


# ----------------------------------------------------------------------------------------------- the figure


def plot_excitations(
    result: ExcitationResult,
    path: str | os.PathLike,
    blocks: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """The paper's figure: per chosen block, the mean activation per channel for each class and "all"; plus a
    summary panel of every block's distance from the identity and class spread. Written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from se_plugins.atomic import atomic_write_bytes

    blocks = list(blocks) if blocks else select_blocks(result.blocks, None)
    classes = list(classes) if classes else list(result.class_names)
    panels = len(blocks) + 1
    cols = min(3, panels)
    rows = -(-panels // cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    cmap = _class_colours(len(result.class_names))
    for ax, block in zip(axes, blocks, strict=False):
        mean = result.mean[block]
        x = np.arange(mean.shape[1])
        for name in classes:
            k = result.class_names.index(name)
            if result.counts[k] > 0:
                ax.plot(x, mean[k], lw=1.0, color=cmap[k], label=f"{name} ({int(result.counts[k])})")
        ax.plot(x, mean[-1], lw=1.4, color="black", ls="--", label=f"{ALL} ({int(result.counts[-1])})")
        ax.set(
            title=f"{block} (|g-1| {result.distance_from_identity[block]:.3f})",
            xlabel="channel index",
            ylabel="activation sigmoid(z)",
            ylim=(-0.02, 1.02),
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    ax = axes[len(blocks)]
    x = np.arange(len(result.blocks))
    ax.bar(x, [result.distance_from_identity[b] for b in result.blocks], color="tab:blue", alpha=0.7)
    ax.set(xlabel="SE block (input → output)", ylabel="mean |gate − 1|", title="distance from identity / class spread")
    ax.set_xticks(x, [b.removesuffix(".se") for b in result.blocks], rotation=90, fontsize=7)
    twin = ax.twinx()
    twin.plot(x, [result.class_spread[b] for b in result.blocks], "o-", color="tab:red", ms=3)
    twin.set_ylabel("class spread (std over classes)", color="tab:red")
    ax.grid(alpha=0.3)
    for extra in axes[panels:]:
        extra.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(Path(path), buffer.getvalue())


def _class_colours(k: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


# ----------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``se-plugins excitations`` arguments."""
    parser.add_argument("config", help="YAML config of the model (see configs/)")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="weights to analyse (.pth)")
    parser.add_argument("--blocks", nargs="+", metavar="BLOCK", help="blocks to draw: names (layer4.0) or indices")
    parser.add_argument("--classes", nargs="+", metavar="CLASS", help="classes to draw: names or indices")
    parser.add_argument("--out", metavar="DIR", help="output folder (default <output_dir>/excitations)")
    parser.add_argument("--max-images", type=int, metavar="N", help="analyse at most about N validation images")
    parser.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides"
    )
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Run ``se-plugins excitations``; print the per-block summary and where the files went."""
    from se_plugins.engine.config import load_config

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "excitations"
    result = run_excitations(cfg, args.checkpoint, out, args.blocks, args.classes, args.max_images, args.config)
    width = max(len(b) for b in result.blocks)
    print(f"{'block':<{width}}  mean|g-1|  class_spread")
    for b in result.blocks:
        print(f"{b:<{width}}  {result.distance_from_identity[b]:9.4f}  {result.class_spread[b]:12.4f}")
    print(f"wrote {out / 'excitations.png'} and {out / 'excitations.json'}")
    return 0
