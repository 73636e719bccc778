"""The run configuration: one YAML file validated against a typed schema, plus ``--set key=value`` overrides.

The schema is the dataclass ``Config`` below (OmegaConf structured config). Every key a YAML file may hold is
a field here, with its type and default; an unknown key, a value of the wrong type or an invalid choice raises
``se_plugins.errors.ConfigError`` with one line naming the file (or override) and the key::

    configs/x.yaml: train.lr: Value 'abc' of type 'str' could not be converted to Float

Example:
    >>> cfg = load_config("configs/detection/shapes_fasterrcnn_se_r18.yaml", ["train.epochs=2"])
    >>> cfg.train.lr
    0.02
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from se_plugins.errors import ConfigError


@dataclass
class SEConfig:
    """Squeeze-and-Excitation options passed to the model builder."""

    enabled: bool = True  # insert SE blocks at all (false = the plain baseline model)
    reduction: int = 16  # reduction ratio r of the SE bottleneck (hidden width = C / r)
    stages: list[int] | None = None  # ResNet stages (1..4) that get SE; null = all stages
    position: str | None = None  # standard | pre | post | identity (the paper's variants); null: the family's own
    init: str = "identity"  # "identity" (model starts equal to the SE-free one) | "random" (the paper's init)
    encoder: bool = True  # segmentation: SE in the encoder blocks
    decoder: bool = True  # segmentation: SE in the decoder blocks


@dataclass
class ModelConfig:
    """Which model the task builds."""

    name: str = "fasterrcnn_se_resnet50_fpn"  # builder, e.g. fasterrcnn_se_resnet50_fpn, se_unet
    # classification: a timm model name (resnet50, se_plugin_resnet50, convnext_tiny...)
    backbone: str | None = None  # backbone/encoder name for builders taking one (e.g. se_plugin_resnet18)
    num_classes: int | None = None  # classes incl. background for detection; null = taken from the data
    pretrained_backbone: str | None = None  # local backbone weights file (no downloads); null = random
    trainable_backbone_layers: int | None = None  # detection: trainable stages 0..5; null = default
    se: SEConfig = field(default_factory=SEConfig)  # Squeeze-and-Excitation options
    min_size: int = 800  # detection: shorter image side after the model's internal resize
    max_size: int = 1333  # detection: longer image side limit of the internal resize
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra builder keyword arguments, passed as is


@dataclass
class ShapesConfig:
    """Parameters of the built-in synthetic shapes data (generated into ``data.root`` on first use)."""

    num_train: int = 200  # training images
    num_val: int = 50  # validation images
    image_size: int = 256  # square image side in pixels
    seed: int = 0  # generator seed (the data is a pure function of these four values)


@dataclass
class DataConfig:
    """Where the data is and how it is loaded."""

    format: str = "coco"  # "coco" | "voc" | "shapes" (built-in synthetic data, see data.shapes) | "imagefolder"
    root: str | None = None  # VOC root (e.g. VOCdevkit/VOC2007), COCO root, or shapes output folder
    train_images: str | None = None  # COCO: training image folder (relative paths are relative to root)
    train_annotations: str | None = None  # COCO: training instances JSON
    val_images: str | None = None  # COCO: validation image folder
    val_annotations: str | None = None  # COCO: validation instances JSON
    train_split: str = "train"  # VOC: ImageSets list used for training (e.g. trainval)
    val_split: str = "val"  # VOC: ImageSets list used for validation (e.g. test)
    classes: Any = None  # class names in label order (a list); "auto" (VOC: names found in the XML) or null = defaults
    voc_coordinates: str = "1-based"  # VOC XML boxes: "1-based" (the VOC devkit) | "0-based" (many export tools)
    keep_background_category: bool = False  # COCO: keep a category named like "_background_" as a class
    image_size: int | None = None  # segmentation: resize images to this square side; null = keep size
    # classification: the model's input side (default 224)
    crop_size: int | None = None  # segmentation: random crop side for training; null = no crop
    hflip_prob: float = 0.5  # probability of a horizontal flip during training
    crop_pct: float = 0.875  # classification eval: resize to image_size / crop_pct, then center crop
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # classification: RandomResizedCrop area
    keep_empty: bool = False  # detection: keep training images without any box
    skip_bad_images: bool = False  # skip unreadable images with a warning instead of failing
    num_workers: int = 2  # DataLoader worker processes per training process
    persistent_workers: bool = True  # keep workers between epochs (num_workers > 0); false = bit-exact resume
    channels: int = 3  # image channels the model takes (1 gray, 3 RGB, 4 RGB+NIR/RGBA, 13 ...); gray -> 3 repeats
    alpha: str = "blend_black"  # alpha channel: "blend_black" | "blend_white" | "drop" | "keep" (as last channel)
    intensity: str = "auto"  # "auto" (8-bit /255, 16-bit /65535, float as is) | "percentile" | "range"
    intensity_range: list[float] | None = None  # intensity "range": [lo, hi] -> [0, 1], e.g. [0, 4095] for 12-bit
    intensity_percentiles: list[float] = field(default_factory=lambda: [1.0, 99.8])  # "percentile": [low, high]
    mean: list[float] | None = None  # per-channel mean after intensity scaling; null = ImageNet (3 ch) / 0.449 (1 ch)
    std: list[float] | None = None  # per-channel std; null = ImageNet (3 ch) / 0.226 (1 ch); other counts: required
    shapes: ShapesConfig = field(default_factory=ShapesConfig)  # format "shapes" only


@dataclass
class TrainConfig:
    """Optimisation and the training loop."""

    epochs: int = 12  # number of epochs
    batch_size: int = 2  # images per process and iteration
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.02  # peak learning rate (after warmup)
    momentum: float = 0.9  # SGD momentum (AdamW: beta1)
    weight_decay: float = 1e-4  # weight decay of conv/linear weights
    norm_weight_decay: float | None = 0.0  # weight decay of norm weights and biases; null = weight_decay
    warmup_iters: int = 500  # linear warmup length in iterations (0 = none)
    warmup_factor: float = 0.001  # LR factor at iteration 0, rising linearly to 1 at warmup_iters
    scheduler: str = "multistep"  # "multistep" | "cosine" (over all iterations, down to min_lr_factor)
    milestones: list[int] = field(default_factory=lambda: [8, 11])  # multistep: epochs where LR *= gamma
    gamma: float = 0.1  # multistep: LR decay factor
    min_lr_factor: float = 0.0  # cosine: final LR as a fraction of lr
    clip_grad_norm: float | None = None  # clip the global gradient norm to this value; null = no clipping
    amp: bool = False  # mixed precision (CUDA only; ignored on CPU)
    amp_dtype: str = "float16"  # "float16" (with GradScaler) | "bfloat16"
    channels_last: bool = False  # channels_last memory format for the model (and the task's inputs)
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    find_unused_parameters: bool = False  # DDP: needed only when some parameters get no gradient
    eval_every: int = 1  # evaluate every N epochs (and always after the last one)
    checkpoint_every: int = 1  # write last.pth every N epochs (and always after the last one)
    log_every: int = 20  # log training losses every N iterations
    max_iters_per_epoch: int | None = None  # cap the iterations per epoch (quick runs); null = whole loader
    num_vis: int = 4  # prediction PNGs drawn on validation images at the end (0 = none)
    tensorboard: bool = True  # write TensorBoard events (when tensorboard is installed)


@dataclass
class EvalConfig:
    """Evaluation."""

    metric: str = "coco"  # "coco" | "voc07" (11-point) | "voc" (area) | "miou"
    batch_size: int = 2  # images per process and iteration
    score_threshold: float = 0.5  # detections below this score are not drawn in the prediction PNGs
    main_metric: str | None = None  # detection: metric selecting best.pth (AP50, AP, segm_AP50, ...); null = AP50/mAP


@dataclass
class LossConfig:
    """Segmentation loss."""

    name: str = "ce"  # "ce" | "dice" | "focal" | "ce+dice"
    ignore_index: int = 255  # label value ignored by loss and metric
    focal_gamma: float = 2.0  # focal loss focusing parameter
    dice_weight: float = 1.0  # weight of the dice term in "ce+dice"
    label_smoothing: float = 0.0  # classification: cross-entropy label smoothing (timm's recipes: 0.1)


@dataclass
class Config:
    """A complete run: task, model, data, training, evaluation, loss."""

    task: str = "detection"  # "detection" | "segmentation" | "classification" | "package.module:TaskClass"
    output_dir: str = "runs/exp"  # run directory: config, metrics, checkpoints, curves, predictions
    seed: int = 0  # random seed (each DDP rank adds its rank)
    device: str = "auto"  # "auto" (CUDA when available) | "cpu" | "cuda" | "cuda:N"
    model: ModelConfig = field(default_factory=ModelConfig)  # which model to build
    data: DataConfig = field(default_factory=DataConfig)  # data location and loading
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and the training loop
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation
    loss: LossConfig = field(default_factory=LossConfig)  # segmentation loss


CHOICES: dict[str, tuple[str, ...]] = {
    "model.se.position": ("standard", "pre", "post", "identity"),
    "model.se.init": ("identity", "random"),
    "data.format": ("coco", "voc", "shapes", "imagefolder"),
    "data.voc_coordinates": ("1-based", "0-based"),
    "data.alpha": ("blend_black", "blend_white", "drop", "keep"),
    "data.intensity": ("auto", "percentile", "range"),
    "train.optimizer": ("sgd", "adamw"),
    "train.scheduler": ("multistep", "cosine"),
    "train.amp_dtype": ("float16", "bfloat16"),
    "eval.metric": ("coco", "voc07", "voc", "miou"),
    "loss.name": ("ce", "dice", "focal", "ce+dice"),
}
"""Allowed values of the string keys that are a choice."""

_OPTIONAL_CHOICES = {"model.se.position"}  # null allowed: add_se's default

_MIN_VALUES: dict[str, float] = {
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.warmup_iters": 0,
    "train.eval_every": 1,
    "train.checkpoint_every": 1,
    "train.log_every": 1,
    "train.max_iters_per_epoch": 1,
    "train.num_vis": 0,
    "eval.batch_size": 1,
    "data.num_workers": 0,
    "data.channels": 1,
    "model.se.reduction": 1,
}
"""Smallest allowed value of integer keys (a null Optional value is always allowed)."""


def default_config() -> DictConfig:
    """The schema filled with its defaults (struct mode: unknown keys cannot be added)."""
    return OmegaConf.structured(Config)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a YAML config, validate it against ``Config``, apply ``key=value`` overrides, validate again.

    Args:
        path: YAML file. Keys not given keep the schema defaults.
        overrides: Dotlist overrides such as ``["train.lr=0.01", "train.milestones=[8,11]"]``; values are
            parsed as YAML (``null``, numbers, lists).

    Returns:
        The validated config (interpolations resolved).

    Raises:
        ConfigError: one line naming the file or override and the key: missing file, YAML syntax error,
            unknown key, wrong type, invalid choice or out-of-range value.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_error_line(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    cfg = merge_into(default_config(), raw, str(path))
    cfg = apply_overrides(cfg, overrides)
    check_data_imagery(cfg.data, f"{path} with --set" if overrides else str(path))
    return cfg


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Return ``cfg`` with dotlist ``overrides`` (``"a.b=value"``) merged in and validated.

    Raises:
        ConfigError: naming the override (``--set a.b=value``) and the key.
    """
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=0.01")
        try:
            patch = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:
            raise ConfigError(f"--set {item}: cannot parse value: {_first_line(str(e))}") from None
        cfg = merge_into(cfg, patch, f"--set {item}")
    if overrides:
        check_data_imagery(cfg.data, "--set")
    return cfg


def merge_into(cfg: DictConfig, patch: dict[str, Any], source: str) -> DictConfig:
    """Merge a plain dict into a validated config and validate the result (errors name ``source``)."""
    _check_sections(cfg, patch, source, "")
    try:
        merged = OmegaConf.merge(cfg, patch)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_omegaconf_error_line(e)}") from None
    assert isinstance(merged, DictConfig)
    validate_config(merged, source)
    return merged


def validate_config(cfg: DictConfig, source: str = "config") -> None:
    """Check the values the type system cannot: choices and ranges (raises ConfigError naming the key)."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is None and key in _OPTIONAL_CHOICES:
            continue
        if value not in allowed:
            raise ConfigError(f"{source}: {key}: {value!r} is not one of {', '.join(allowed)}")
    for key, low in _MIN_VALUES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value < low:
            raise ConfigError(f"{source}: {key}: must be >= {low:g}, got {value}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"{source}: train.lr: must be > 0, got {cfg.train.lr}")
    if not 0 < cfg.data.crop_pct <= 1:
        raise ConfigError(f"{source}: data.crop_pct: must be in (0, 1], got {cfg.data.crop_pct}")
    scale = list(cfg.data.crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"{source}: data.crop_scale: expected [low, high] with 0 < low <= high <= 1, got {scale}")
    if not 0 <= cfg.loss.label_smoothing < 1:
        raise ConfigError(f"{source}: loss.label_smoothing: must be in [0, 1), got {cfg.loss.label_smoothing}")
    if any(m < 1 for m in cfg.train.milestones):
        raise ConfigError(f"{source}: train.milestones: epochs must be >= 1, got {list(cfg.train.milestones)}")
    if not cfg.task or not re.fullmatch(r"[\w.]+(:\w+)?", cfg.task):
        raise ConfigError(f"{source}: task: {cfg.task!r} is not a task name or 'package.module:Class'")
    classes = cfg.data.classes
    if not (
        classes is None
        or classes == "auto"
        or (isinstance(classes, ListConfig) and len(classes) and all(isinstance(c, str) for c in classes))
    ):
        raise ConfigError(
            f"{source}: data.classes: expected null, 'auto' or a non-empty list of names, got {classes!r}"
        )
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"{source}: device: {cfg.device!r} is not one of auto, cpu, cuda, cuda:N")


def config_classes(data_cfg: DictConfig) -> list[str] | str | None:
    """``data.classes`` as the readers take it: a list of names, ``"auto"`` or None."""
    classes = data_cfg.classes
    return list(classes) if isinstance(classes, ListConfig) else classes


def check_data_imagery(data: DictConfig, source: str = "config") -> None:
    """Check ``data.intensity_range`` / ``intensity_percentiles`` / ``mean`` / ``std`` against each other.

    Keys that depend on each other are checked once all overrides are in (``--set data.intensity=range
    data.intensity_range=[0,4095]`` is two overrides), by ``load_config`` and ``apply_overrides``.
    """
    if data.intensity == "range":
        r = data.intensity_range
        if r is None or len(r) != 2 or not r[0] < r[1]:
            got = "null" if r is None else list(r)
            raise ConfigError(f"{source}: data.intensity_range: intensity range needs [lo, hi] with lo < hi, got {got}")
    p = list(data.intensity_percentiles)
    if len(p) != 2 or not 0 <= p[0] < p[1] <= 100:
        raise ConfigError(
            f"{source}: data.intensity_percentiles: need [low, high] with 0 <= low < high <= 100, got {p}"
        )
    for key in ("mean", "std"):
        values = data[key]
        if values is not None and len(values) != data.channels:
            raise ConfigError(
                f"{source}: data.{key}: {len(values)} values for data.channels {data.channels} (one per channel)"
            )
    if data.std is not None and any(v <= 0 for v in data.std):
        raise ConfigError(f"{source}: data.std: every value must be > 0, got {list(data.std)}")


def save_config(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """Write ``cfg`` (resolved) as YAML to ``path`` atomically; returns the path."""
    from se_plugins.atomic import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, config_to_yaml(cfg).encode("utf-8"))
    return path


def config_to_yaml(cfg: DictConfig) -> str:
    """The resolved config as a YAML string (what ``config.yaml`` and checkpoints hold)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


# ------------------------------------------------------------------------------------------------ helpers


def _check_sections(schema: Any, patch: Any, source: str, prefix: str) -> None:
    """Reject a scalar/list where the schema has a section and a mapping where it has a list.

    OmegaConf raises a bare ``TypeError`` (no key) for these, so they are caught here with the key named.
    """
    if not isinstance(schema, DictConfig) or not isinstance(patch, dict):
        return
    for key, value in patch.items():
        full = f"{prefix}{key}"
        if key not in schema:
            continue  # OmegaConf reports the unknown key (with a "did you mean")
        node = schema._get_node(key)
        if isinstance(node, DictConfig):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full}: expected a mapping of keys, got {_describe(value)}")
            _check_sections(node, value, source, f"{full}.")
        elif isinstance(node, ListConfig) and isinstance(value, dict):
            raise ConfigError(f"{source}: {full}: expected a list, got a mapping")


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _omegaconf_error_line(e: OmegaConfBaseException) -> str:
    """``"<full.key>: <what is wrong>"`` from an OmegaConf exception (its message is multi-line)."""
    msg = _first_line(getattr(e, "msg", None) or str(e)) or type(e).__name__
    key = getattr(e, "full_key", None) or ""
    unknown = re.match(r"Key '([^']+)' not in '(\w+)'\.?(?: Did you mean: '([^']+)'\?)?", msg)
    if unknown:
        hint = f" (did you mean '{unknown.group(3)}'?)" if unknown.group(3) else ""
        msg = f"unknown key{hint}"
    return f"{key}: {msg}" if key else msg


def _yaml_error_line(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or _first_line(str(e))
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"
