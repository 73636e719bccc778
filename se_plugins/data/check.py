"""Validation of built data sets before training: what ``se-plugins check-data`` reports, and ``train`` checks first.

Works on the readers of this package (``CocoDetection``, ``VOCDetection``, ``CocoSegmentation``,
``VOCSegmentation``, also inside a wrapper with a ``.dataset`` attribute); other data sets are reported as not
checked. Two depths:

- ``decode=False`` (the start of every ``se-plugins train``): no image is opened; every image file must exist.
  Everything else that needs no pixels (boxes, ids, categories, the evaluation ground truth) the readers have
  already checked when they were built.
- ``decode=True`` (``se-plugins check-data``): every image (or the first ``max_images``) is decoded and compared
  with its annotated size; segmentation masks are read and their values and sizes checked.

Example:
    >>> reports = check_datasets({"train": train_set, "val": val_set}, decode=True)
    >>> print(format_reports(reports))
    >>> write_figures(reports, {"train": train_set, "val": val_set}, "runs/x/check-data")
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from se_plugins.atomic import atomic_write_bytes
from se_plugins.data._messages import some_ids
from se_plugins.data.coco import CocoDetection, CocoSegmentation, _CocoBase
from se_plugins.data.voc import IGNORE_INDEX, VOCDetection, VOCSegmentation, voc_palette
from se_plugins.errors import SEPluginsError

MAX_ERRORS = 10
"""Problems listed per split (the count covers all of them)."""

_DROPPED_WORDS = {
    "degenerate_boxes": ("degenerate boxes dropped (under 1 px after clipping)", "annotation"),
    "outside_boxes": ("boxes outside their image dropped", "annotation"),
    "unreadable_images": ("missing or unreadable images skipped", "image"),
    "empty_images": ("images without boxes dropped (keep_empty false)", "image"),
}


@dataclass
class SplitReport:
    """What ``check_dataset`` found in one split.

    Attributes:
        split: Its name (``train``, ``val``).
        source: The annotation file or folder it was read from.
        kind: ``detection``, ``segmentation`` or ``unknown`` (a data set this module cannot inspect).
        num_images: Items in the split.
        class_names: Class names (detection: labels 1..K; segmentation: mask values, background first).
        instances: Detection: training boxes per class.
        pixels: Segmentation with ``decode``: pixels per class (``ignore`` for 255).
        empty_images: Ids of images without any box (detection).
        dropped: What the reader dropped, ``{reason: [ids]}`` (see ``_DROPPED_WORDS``).
        sizes: ``(height, width)`` per image (annotated; decoded for VOC segmentation).
        decoded: Images decoded and checked.
        notes: Facts to know (fixes of the evaluation ground truth, classes without training data).
        errors: Problems that stop training (one line each; at most ``MAX_ERRORS``).
        num_errors: All problems found.
    """

    split: str
    source: str
    kind: str
    num_images: int = 0
    class_names: list[str] = field(default_factory=list)
    instances: dict[str, int] = field(default_factory=dict)
    pixels: dict[str, int] = field(default_factory=dict)
    empty_images: list[Any] = field(default_factory=list)
    dropped: dict[str, list[Any]] = field(default_factory=dict)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    decoded: int = 0
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    num_errors: int = 0

    def add_error(self, message: str) -> None:
        """Record one problem (listed while fewer than ``MAX_ERRORS`` are)."""
        self.num_errors += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)


def unwrap(dataset: Any) -> Any:
    """The reader inside task wrappers (objects with a ``.dataset`` attribute)."""
    while not isinstance(dataset, _CocoBase | VOCDetection | VOCSegmentation) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def check_dataset(dataset: Any, split: str, decode: bool = True, max_images: int | None = None) -> SplitReport:
    """Check one built data set (see the module docstring) and summarise it.

    Args:
        dataset: A reader of this package (or a wrapper of one).
        split: Name shown in the report.
        decode: Decode images (and read masks) and compare them with the annotations.
        max_images: Decode at most this many (the first ones); None = all.
    """
    ds = unwrap(dataset)
    if isinstance(ds, _CocoBase):
        source = str(ds.ann_file)
    elif isinstance(ds, VOCDetection | VOCSegmentation):
        source = f"{ds.root} (split {ds.split!r})"
    else:
        return SplitReport(split, type(ds).__name__, "unknown", num_images=len(ds) if hasattr(ds, "__len__") else 0)
    detection = isinstance(ds, CocoDetection | VOCDetection)
    report = SplitReport(split, source, "detection" if detection else "segmentation", num_images=len(ds))
    report.class_names = list(ds.class_names)
    report.dropped = {k: list(v) for k, v in getattr(ds, "dropped", {}).items() if v}
    report.notes += [f"evaluation ground truth: {n}" for n in getattr(ds, "eval_notes", [])]
    for i in range(len(ds)):
        path = _image_path(ds, i)
        if not path.is_file():
            report.add_error(f"{path}: image not found ({_item_name(ds, i)})")
    if detection:
        report.instances = ds.instance_counts()
        report.empty_images = [_item_id(ds, i) for i in range(len(ds)) if _num_boxes(ds, i) == 0]
    if not isinstance(ds, VOCSegmentation):
        report.sizes = [ds.get_height_and_width(i) for i in range(len(ds))]
    if decode and not report.errors:
        _decode_all(ds, report, max_images)
    return report


def check_datasets(
    datasets: Mapping[str, Any], decode: bool = True, max_images: int | None = None
) -> dict[str, SplitReport]:
    """``check_dataset`` of each ``{split: dataset}``, plus a note for classes without training instances."""
    reports = {name: check_dataset(ds, name, decode, max_images) for name, ds in datasets.items()}
    train = reports.get("train")
    if train is not None and train.instances:
        missing = [name for name, n in train.instances.items() if n == 0]
        if missing:
            train.notes.append(f"classes without any training box: {', '.join(missing)}")
    return reports


def format_reports(reports: Mapping[str, SplitReport]) -> str:
    """A summary a person can act on: per split images, boxes, sizes, drops, notes, errors; per class counts."""
    lines: list[str] = []
    for r in reports.values():
        if r.kind == "unknown":
            lines.append(f"{r.split}: {r.num_images} items of {r.source} (not a reader of se_plugins: not checked)")
            continue
        head = f"{r.split}: {r.source}: {r.num_images} images"
        if r.kind == "detection":
            head += f", {sum(r.instances.values())} boxes, {len(r.empty_images)} images without boxes"
            if r.empty_images:
                head += f" (ids {some_ids(r.empty_images)})"
        lines.append(head)
        if r.sizes:
            heights, widths = [h for h, _ in r.sizes], [w for _, w in r.sizes]
            lines.append(
                f"  image sizes (W x H): {min(widths)}x{min(heights)} .. {max(widths)}x{max(heights)}"
                + (f"; {r.decoded} decoded and checked" if r.decoded else "")
            )
        elif r.decoded:
            lines.append(f"  {r.decoded} images decoded and checked")
        for reason, ids in r.dropped.items():
            words, what = _DROPPED_WORDS.get(reason, (reason, "item"))
            lines.append(f"  {len(ids)} {words}: {what} ids {some_ids(ids)}")
        lines += [f"  note: {n}" for n in r.notes]
        lines += [f"  error: {e}" for e in r.errors]
        if r.num_errors > len(r.errors):
            lines.append(f"  ... {r.num_errors - len(r.errors)} more errors")
    checked = [r for r in reports.values() if r.kind != "unknown"]
    if checked:
        lines.append(_class_table(checked))
    problems = sum(r.num_errors for r in reports.values())
    lines.append(
        f"check-data: {problems} problems: training would not start"
        if problems
        else "check-data: OK: training would start"
    )
    return "\n".join(lines)


def first_error(reports: Mapping[str, SplitReport]) -> str | None:
    """``"<problem> (and N more)"`` for the first problem of any split, or None when there is none."""
    total = sum(r.num_errors for r in reports.values())
    for r in reports.values():
        if r.errors:
            return r.errors[0] + (f" (and {total - 1} more problems)" if total > 1 else "")
    return None


def summary_line(reports: Mapping[str, SplitReport]) -> str:
    """One line for the training log: images, boxes and classes per split."""
    parts = []
    for r in reports.values():
        if r.kind == "detection":
            parts.append(f"{r.split} {r.num_images} images / {sum(r.instances.values())} boxes")
        elif r.kind == "segmentation":
            parts.append(f"{r.split} {r.num_images} images")
    names = next((r.class_names for r in reports.values() if r.class_names), [])
    return f"data: {', '.join(parts)}; {len(names)} classes ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"


# ------------------------------------------------------------------------------------------------ figures


def write_figures(
    reports: Mapping[str, SplitReport], datasets: Mapping[str, Any], out_dir: str | os.PathLike, num_samples: int = 4
) -> list[Path]:
    """Write ``class_histogram.png`` (instances or pixels per class and split) and ``samples.png`` (the first
    ``num_samples`` training images with their boxes or masks) into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    files = []
    checked = {k: r for k, r in reports.items() if r.kind != "unknown"}
    if checked:
        files.append(_histogram(checked, out_dir / "class_histogram.png"))
    name = "train" if "train" in datasets else next(iter(datasets), None)
    if name is not None and checked.get(name) is not None and not checked[name].errors and num_samples > 0:
        files.append(_samples(unwrap(datasets[name]), num_samples, out_dir / "samples.png"))
    return files


def _histogram(reports: Mapping[str, SplitReport], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = {s: (r.instances or r.pixels) for s, r in reports.items()}
    names = next((list(c) for c in counts.values() if c), [])
    unit = "boxes" if any(r.instances for r in reports.values()) else "pixels"
    fig = Figure(figsize=(max(6.0, 0.5 * len(names) + 2), 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / max(1, len(counts))
    for k, (split, c) in enumerate(counts.items()):
        ax.bar(np.arange(len(names)) + k * width, [c.get(n, 0) for n in names], width, label=split)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
    ax.set(ylabel=unit, title=f"{unit} per class")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def _samples(ds: Any, num: int, path: Path, height: int = 256) -> Path:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    tiles = []
    palette = voc_palette()
    saved, ds.transforms = ds.transforms, None
    try:
        for i in range(min(num, len(ds))):
            image, target = ds[i]
            scale = height / image.shape[-2]
            size = [height, max(1, round(image.shape[-1] * scale))]
            canvas = (image.as_subclass(torch.Tensor) * 255).round().clamp(0, 255).to(torch.uint8)
            canvas = TF.resize(canvas, size, antialias=True)
            if isinstance(target, dict):
                names = [ds.class_names[int(label) - 1] for label in target["labels"]]
                boxes = target["boxes"].as_subclass(torch.Tensor) * scale
                if len(boxes):
                    canvas = draw_bounding_boxes(canvas, boxes, labels=names, colors="red", width=2)
            else:
                mask = TF.resize(target.as_subclass(torch.Tensor)[None], size, InterpolationMode.NEAREST)[0]
                values = [v for v in mask.unique().tolist() if v != 0]
                if values:  # the VOC colour of each class index (255, ignore: light grey)
                    colors = [tuple(palette[3 * v : 3 * v + 3]) for v in values]
                    layers = torch.stack([mask == v for v in values])
                    canvas = draw_segmentation_masks(canvas, layers, alpha=0.6, colors=colors)
            tiles.append(Image.fromarray(canvas.permute(1, 2, 0).numpy()))
    finally:
        ds.transforms = saved
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 4 * max(0, len(tiles) - 1), height), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 4
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------------ helpers


def _image_path(ds: Any, idx: int) -> Path:
    return ds.image_path(ds.ids[idx]) if isinstance(ds, _CocoBase) else ds.image_path(idx)


def _item_id(ds: Any, idx: int) -> Any:
    return ds.ids[idx]


def _item_name(ds: Any, idx: int) -> str:
    return f"image id {ds.ids[idx]}" if isinstance(ds, _CocoBase) else f"item {ds.ids[idx]!r}"


def _num_boxes(ds: Any, idx: int) -> int:
    if isinstance(ds, CocoDetection):
        return len(ds._targets[ds.ids[idx]]["labels"])
    return len(ds._records[idx]["labels"])


def _decode_all(ds: Any, report: SplitReport, max_images: int | None) -> None:
    """Decode images (and masks) one by one; record each failure instead of stopping at the first."""
    count = len(ds) if max_images is None else min(max_images, len(ds))
    pixels = np.zeros(len(ds.class_names) + 1, dtype=np.int64)  # last bin: ignore (255)
    sizes = []
    saved, ds.transforms = ds.transforms, None
    try:
        for i in range(count):
            try:
                if isinstance(ds, CocoDetection):
                    image = ds._load_image(i)  # __getitem__ would replace a bad image when skip_bad_images
                    target = None
                else:
                    image, target = ds[i]
            except SEPluginsError as e:
                report.add_error(str(e))
                continue
            sizes.append(tuple(image.shape[-2:]))
            if isinstance(ds, CocoSegmentation | VOCSegmentation):
                mask = target.as_subclass(torch.Tensor).numpy().ravel()
                mask = np.where(mask == IGNORE_INDEX, len(ds.class_names), mask)
                pixels += np.bincount(mask, minlength=len(pixels))
    finally:
        ds.transforms = saved
    report.decoded = count
    if isinstance(ds, CocoSegmentation | VOCSegmentation):
        report.pixels = {name: int(n) for name, n in zip(ds.class_names, pixels, strict=False)}
        report.pixels["ignore"] = int(pixels[-1])
        if isinstance(ds, VOCSegmentation):
            report.sizes = sizes


def _class_table(reports: list[SplitReport]) -> str:
    """Per-class counts, one column per split (boxes for detection, pixels for segmentation)."""
    columns = {r.split: (r.instances or r.pixels) for r in reports}
    names: list[str] = []
    for c in columns.values():
        names += [n for n in c if n not in names]
    if not names:
        return "classes: " + ", ".join(reports[0].class_names)
    unit = "boxes" if any(r.instances for r in reports) else "pixels"
    width = max(len(n) for n in [*names, "class"])
    head = f"  {'class':<{width}}" + "".join(f"  {s + ' ' + unit:>14}" for s in columns)
    rows = [f"  {n:<{width}}" + "".join(f"  {c.get(n, 0):>14}" for c in columns.values()) for n in names]
    return "\n".join([head, *rows])


__all__ = [
    "MAX_ERRORS",
    "SplitReport",
    "check_dataset",
    "check_datasets",
    "first_error",
    "format_reports",
    "summary_line",
    "unwrap",
    "write_figures",
]
