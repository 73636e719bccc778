"""Object detection and instance segmentation: Faster/Mask R-CNN, RetinaNet, FCOS (with or without SE).

``task: detection`` in a config selects this task. What the config keys mean here:

- ``data.format``: ``coco`` (``train_images`` / ``train_annotations`` / ``val_images`` / ``val_annotations``,
  relative to ``data.root`` when set), ``voc`` (``data.root`` holding ``Annotations/``, ``JPEGImages/``,
  ``ImageSets/Main/``; ``train_split`` / ``val_split``; ``classes``, default the 20 VOC classes) or ``shapes``
  (generated into ``data.root`` by ``make_shapes`` on first use, then read through the COCO loader).
- ``model.name``: a key of ``se_plugins.detection.DETECTION_MODELS``. The ``*_timm_fpn`` builders take
  ``model.backbone``, a timm name: with ``model.se.enabled`` the ``se_plugin_`` twin of the base
  architecture is built (``resnet18`` and ``se_plugin_resnet18`` both mean SE-ResNet-18), without it the
  plain base (the baseline). The ``*_se_resnet50_fpn(_v2)`` recipes get ``se_stages=()`` when SE is off.
  Mask R-CNN models (``maskrcnn_*``) make the data yield instance masks and add mask AP to the metrics;
  the losses of every model are logged under ``loss_<name>`` (RetinaNet's ``classification`` as
  ``loss_classification``), summed into ``loss``.
- ``model.num_classes``: null = the data's classes + 1 (background).
- ``model.pretrained_backbone``: a local backbone weights file (no downloads); ``model.kwargs``: any other
  keyword of the builder or of ``torchvision.models.detection.FasterRCNN`` (``anchor_sizes``, ``rpn_*``...),
  e.g. ``weights_file``: the whole detector's weights (a ``last.pth`` of this package; SE it lacks keeps its init).
- ``data.channels`` / ``data.alpha`` / ``data.intensity*``: how images are decoded (``ImageReader``);
  ``data.channels`` other than 3 needs ``fasterrcnn_timm_fpn`` (the backbone gets timm's ``in_chans``, and a
  pretrained first conv is adapted by timm). ``data.mean`` / ``data.std`` become ``FasterRCNN``'s ``image_mean`` /
  ``image_std`` (null with 3 channels: the builder's defaults).
- ``eval.metric``: ``coco`` (main metric ``AP50``, the 12 COCOeval numbers; Mask R-CNN adds the 12 mask
  numbers as ``segm_AP``, ``segm_AP50``, ...) or ``voc07`` / ``voc`` (main metric ``mAP``, VOC 11-point /
  area AP at IoU 0.5 plus ``AP_<class>`` per class). ``eval.main_metric`` picks another one for ``best.pth``.

Example:
    >>> cfg = load_config("configs/detection/shapes_fasterrcnn_se_r18.yaml")
    >>> Trainer(cfg).fit()["AP50"]
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from se_plugins.data import (
    SHAPE_CLASSES,
    CocoDetection,
    GroupedBatchSampler,
    VOCDetection,
    create_aspect_ratio_groups,
    detection_collate,
    detection_transforms,
    make_shapes,
)
from se_plugins.data.shapes import ShapesPaths
from se_plugins.detection import DETECTION_MODEL_TYPES, DETECTION_MODELS
from se_plugins.engine.config import config_classes
from se_plugins.engine.distributed import main_process_first
from se_plugins.engine.evaluation import COCO_STAT_NAMES, CocoEvaluator, VOCEvaluator, detections_to_coco_results
from se_plugins.engine.tasks.base import Task
from se_plugins.engine.visualize import (
    add_legend,
    draw_detections,
    hstack_images,
    legend_entries,
    render_image,
    save_png,
)
from se_plugins.errors import ConfigError, SEPluginsError
from se_plugins.models import PREFIX as SE_PLUGIN_PREFIX

logger = logging.getLogger("se_plugins.engine")

MAIN_METRICS: dict[str, str] = {"coco": "AP50", "voc07": "mAP", "voc": "mAP"}
"""``eval.metric`` → the metric that selects ``best.pth`` unless ``eval.main_metric`` is set."""

SEGM_PREFIX = "segm_"
"""Prefix of the mask (``segm``) COCO metrics: ``segm_AP``, ``segm_AP50``, ..."""

MASK_THRESHOLD = 0.5
"""Mask R-CNN's per-pixel probabilities above this are the instance (torchvision's reference value)."""

ASPECT_RATIO_GROUP_FACTOR = 3
"""``create_aspect_ratio_groups(k=3)``: 8 aspect-ratio bins, torchvision's reference setting."""

_TORCHVISION_SE = tuple(name for name in DETECTION_MODELS if "_se_resnet50_fpn" in name)
_RESERVED_KWARGS = ("num_classes", "min_size", "max_size", "backbone", "trainable_backbone_layers")
_CHANNEL_KWARGS = {"in_chans": "data.channels", "in_channels": "data.channels"}


class DetectionTask(Task):
    """Detector training and COCO/VOC evaluation (see the module docstring for the config keys).

    Attributes:
        main_metric: ``eval.main_metric``, else ``"AP50"`` for ``eval.metric: coco``, ``"mAP"`` for ``voc07`` /
            ``voc``.
        with_masks: The model predicts instance masks (Mask R-CNN): the data yields them, COCO evaluation adds
            ``segm`` AP.
        class_names: Names of labels 1..K, known once a dataset is built (or from ``data.classes``).
    """

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        if cfg.eval.metric not in MAIN_METRICS:
            raise ConfigError(f"eval.metric: {cfg.eval.metric!r} is not a detection metric ({', '.join(MAIN_METRICS)})")
        model_type = DETECTION_MODEL_TYPES.get(cfg.model.name)
        self.with_masks = model_type is not None and issubclass(model_type, MaskRCNN)
        if self.with_masks and cfg.data.format == "voc":
            raise ConfigError(
                f"data.format: {cfg.model.name} needs instance masks, which VOC detection data does not have; "
                "use coco or shapes data"
            )
        self.main_metric = cfg.eval.main_metric or MAIN_METRICS[cfg.eval.metric]
        if cfg.eval.metric == "coco":
            names = COCO_STAT_NAMES + ([SEGM_PREFIX + n for n in COCO_STAT_NAMES] if self.with_masks else [])
            if self.main_metric not in names:
                masks = "" if self.with_masks else f" ({cfg.model.name} predicts no masks: no {SEGM_PREFIX}*)"
                raise ConfigError(f"eval.main_metric: {self.main_metric!r} is not one of {', '.join(names)}{masks}")
        elif self.main_metric != "mAP" and not self.main_metric.startswith("AP_"):
            raise ConfigError(
                f"eval.main_metric: {self.main_metric!r}: eval.metric {cfg.eval.metric} gives mAP, AP_<class>"
            )
        classes = config_classes(cfg.data)
        self.class_names: list[str] | None = classes if isinstance(classes, list) else None

    # ------------------------------------------------------------------------------------------------ data

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """Training set (random flip) and validation set (no augmentation) of ``data.format``."""
        return self._dataset(train=True), self._dataset(train=False)

    def build_val_dataset(self) -> Dataset:
        """The validation set alone (``se-plugins eval``)."""
        return self._dataset(train=False)

    def _dataset(self, train: bool) -> Dataset:
        data = self.cfg.data
        transforms = detection_transforms(train, min_size=None, hflip_prob=data.hflip_prob if train else 0.0)
        classes = config_classes(data)
        if data.format == "voc":
            root = self._required_path("root")
            if classes == "auto" and not train:  # the training split's names, so that labels mean the same
                classes = self.class_names or VOCDetection(root, data.train_split, "auto").class_names
            dataset: Any = VOCDetection(
                root,
                data.train_split if train else data.val_split,
                classes=classes,
                transforms=transforms,
                coordinates=data.voc_coordinates,
                image_reader=self.image_reader(),
            )
        else:
            if data.format == "shapes":
                images, annotations = self._shapes_coco_paths(train)
            else:
                images = self._required_path(f"{'train' if train else 'val'}_images")
                annotations = self._required_path(f"{'train' if train else 'val'}_annotations")
            dataset = CocoDetection(
                images,
                annotations,
                transforms=transforms,
                keep_empty=data.keep_empty if train else True,  # evaluation always covers every image
                skip_bad_images=data.skip_bad_images,
                keep_background_category=data.keep_background_category,
                image_reader=self.image_reader(),
                masks=self.with_masks,
            )
            if isinstance(classes, list) and classes != dataset.class_names:
                raise ConfigError(
                    f"data.classes: {classes} differs from the categories of {annotations} "
                    f"({dataset.class_names}); remove data.classes or fix it"
                )
        if not train and len(dataset) == 0:
            raise ConfigError(f"data: the validation set of {data.format} data is empty")
        self.check_first_item(dataset)
        self.class_names = list(dataset.class_names)
        return dataset

    def _required_path(self, key: str) -> Path:
        data = self.cfg.data
        value = data[key]
        if not value:
            raise ConfigError(f"data.{key}: required for data.format {data.format}")
        path = Path(value)
        if key != "root" and data.root and not path.is_absolute():
            path = Path(data.root) / path
        return path

    def _shapes_coco_paths(self, train: bool) -> tuple[Path, Path]:
        """Generate the shapes data into ``data.root`` once (rank 0 first); return one split's paths."""
        root = self._required_path("root")
        s = self.cfg.data.shapes
        with main_process_first():
            paths: ShapesPaths = make_shapes(
                root, num_train=s.num_train, num_val=s.num_val, image_size=s.image_size, seed=s.seed
            )
        if train:
            return paths.coco_train_images, paths.coco_train_ann
        return paths.coco_val_images, paths.coco_val_ann

    def collate(self, batch: Any) -> tuple[list[Any], list[Any]]:
        """``(images, targets)`` lists: detection images keep their own sizes."""
        return detection_collate(batch)

    def build_train_loader(self, dataset: Dataset, distributed: bool) -> DataLoader:
        """Aspect-ratio grouped batches drawn from a ``DistributedSampler`` (exact resume, also under DDP).

        ``GroupedBatchSampler`` yields ``len(sampler) // batch_size`` batches per epoch, every image of a
        batch from the same aspect-ratio bin (less padding inside the model's batch).
        """
        sampler = self.train_sampler(dataset, distributed)
        ratios = dataset.aspect_ratios() if hasattr(dataset, "aspect_ratios") else [1.0] * len(dataset)
        group_ids = create_aspect_ratio_groups(ratios, k=ASPECT_RATIO_GROUP_FACTOR)
        batch_sampler = GroupedBatchSampler(sampler, group_ids, self.cfg.train.batch_size)
        return self.make_loader(dataset, batch_sampler=batch_sampler)

    # ------------------------------------------------------------------------------------------------ model

    def num_classes(self) -> int:
        """``model.num_classes``, or the data's classes + 1 (builds the validation set if they are not known yet).

        Raises:
            ConfigError: ``model.num_classes`` is too small for the data's classes (checked once they are known).
        """
        given = self.cfg.model.num_classes
        if self.class_names is None:
            if given is not None:
                return given  # nothing to check against yet (the trainer builds the data before the model)
            if self.cfg.data.format == "shapes":
                self.class_names = list(SHAPE_CLASSES)
            else:
                self.build_val_dataset()
        assert self.class_names is not None
        needed = len(self.class_names) + 1
        if given is None:
            return needed
        if given < needed:
            raise ConfigError(
                f"model.num_classes: {given} is too small for {len(self.class_names)} classes + background "
                f"(need >= {needed}; null takes it from the data)"
            )
        return given

    def build_model(self) -> nn.Module:
        """The ``DETECTION_MODELS[model.name]`` detector configured by ``model.*`` (see the module doc)."""
        m = self.cfg.model
        if m.name not in DETECTION_MODELS:
            raise ConfigError(f"model.name: unknown detection model {m.name!r}; one of {', '.join(DETECTION_MODELS)}")
        extra = OmegaConf.to_container(m.kwargs, resolve=True)
        assert isinstance(extra, dict)
        for key in _RESERVED_KWARGS:
            if key in extra:
                raise ConfigError(f"model.kwargs.{key}: set model.{key} instead")
        for key, instead in _CHANNEL_KWARGS.items():
            for where, given in (("", extra), ("backbone_kwargs.", extra.get("backbone_kwargs") or {})):
                if key in given:
                    raise ConfigError(f"model.kwargs.{where}{key}: set {instead} instead")
        kwargs: dict[str, Any] = dict(num_classes=self.num_classes(), min_size=m.min_size, max_size=m.max_size)
        kwargs.update(self._input_kwargs(extra))
        if m.trainable_backbone_layers is not None:
            kwargs["trainable_backbone_layers"] = m.trainable_backbone_layers
        timm_route = m.name.endswith("_timm_fpn")
        if m.backbone and not timm_route:
            raise ConfigError(
                f"model.backbone: {m.name} has a fixed backbone; set it to null (or use a *_timm_fpn model)"
            )
        if timm_route:
            kwargs.update(self._timm_kwargs(extra))
        elif self.cfg.data.channels != 3:
            raise ConfigError(
                f"data.channels: {m.name} has torchvision's 3-channel ResNet stem; for {self.cfg.data.channels}-"
                "channel images use model.name fasterrcnn_timm_fpn (timm adapts the first conv, in_chans)"
            )
        elif m.name in _TORCHVISION_SE:
            kwargs.update(self._torchvision_se_kwargs())
        else:
            if m.pretrained_backbone:
                kwargs["backbone_weights_file"] = m.pretrained_backbone
            if m.se.enabled:
                logger.info(f"model {m.name} has no SE options: model.se is ignored (a baseline model)")
        _check_kwargs(m.name, extra)
        kwargs.update(extra)
        try:
            model = DETECTION_MODELS[m.name](**kwargs)
        except SEPluginsError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model ({m.name}): {' '.join(str(e).split())}") from None
        if self.cfg.train.channels_last:
            model.backbone.register_forward_pre_hook(_to_channels_last)
        return model

    def _timm_kwargs(self, extra: dict[str, Any]) -> dict[str, Any]:
        m = self.cfg.model
        if not m.backbone:
            raise ConfigError(f"model.backbone: required for {m.name} (a timm model name, e.g. resnet18)")
        import timm

        base = m.backbone.removeprefix(SE_PLUGIN_PREFIX)
        name = SE_PLUGIN_PREFIX + base if m.se.enabled else base
        if not timm.is_model(name):
            hint = "; set model.se.enabled false for a backbone without an SE variant" if m.se.enabled else ""
            raise ConfigError(f"model.backbone: {name!r} is not a timm model{hint}")
        backbone_kwargs = dict(extra.pop("backbone_kwargs", None) or {})
        if self.cfg.data.channels != 3:
            backbone_kwargs["in_chans"] = int(self.cfg.data.channels)  # timm adapts pretrained first-conv weights
        if m.se.enabled:
            backbone_kwargs.update(self._se_options())
        return dict(
            backbone=name,
            pretrained_backbone=m.pretrained_backbone or False,
            backbone_kwargs=backbone_kwargs,
        )

    def _input_kwargs(self, extra: dict[str, Any]) -> dict[str, Any]:
        """``image_mean`` / ``image_std`` of ``data.mean`` / ``data.std`` (any channel count) for ``FasterRCNN``.

        Nothing for 3 channels without ``data.mean`` / ``data.std``: the builder's defaults (ImageNet, or the timm
        backbone's pretrained-cfg statistics) stay.
        """
        data = self.cfg.data
        if data.channels == 3 and data.mean is None and data.std is None:
            return {}
        for key in ("image_mean", "image_std"):
            if key in extra:
                raise ConfigError(f"model.kwargs.{key}: set data.{key.removeprefix('image_')} instead")
        mean, std = self.image_mean_std()
        return {"image_mean": mean, "image_std": std}

    def _torchvision_se_kwargs(self) -> dict[str, Any]:
        m = self.cfg.model
        kwargs: dict[str, Any] = dict(backbone_weights_file=m.pretrained_backbone)
        if m.se.enabled:
            kwargs.update(self._se_options())
        else:
            kwargs["se_stages"] = ()
        return kwargs

    def _se_options(self) -> dict[str, Any]:
        """``model.se`` as the builders' (and ``se_plugin_*`` timm models') ``se_*`` keywords."""
        se = self.cfg.model.se
        return {
            "se_reduction": se.reduction,
            "se_stages": None if se.stages is None else tuple(se.stages),
            "se_position": se.position,
            "se_init": se.init,
        }

    # ------------------------------------------------------------------------------------------------ steps

    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """The model's own loss dict (R-CNN: RPN, classifier, box, mask; RetinaNet/FCOS: theirs) and its sum.

        Every loss is returned as ``loss_<name>`` (names that already start with ``loss`` are kept), next to
        their sum ``"loss"``, whatever the detector.
        """
        images, targets = batch
        images = [_plain(image).to(device, non_blocking=True) for image in images]
        keys = ("boxes", "labels", "masks") if self.with_masks else ("boxes", "labels")
        targets = [{k: _plain(t[k]).to(device, non_blocking=True) for k in keys} for t in targets]
        losses = model(images, targets)
        named = {k if k.startswith("loss") else f"loss_{k}": v for k, v in losses.items()}
        return {"loss": sum(losses.values()), **{k: v.detach() for k, v in named.items()}}

    @torch.no_grad()
    def predict(self, model: nn.Module, images: list[torch.Tensor], device: torch.device) -> list[dict[str, Any]]:
        """Detections of ``model`` (eval mode) for a list of ``[C, H, W]`` images, on CPU in float32.

        Label 0 (background, which one-stage heads also score) is dropped. Mask R-CNN's masks come back as bool
        ``[N, H, W]`` (probability > ``MASK_THRESHOLD``).
        """
        with self.autocast():
            outputs = model([_plain(image).to(device, non_blocking=True) for image in images])
        predictions = []
        for o in outputs:
            keep = (o["labels"] > 0).cpu()
            p = {
                "boxes": o["boxes"].float().cpu()[keep],
                "labels": o["labels"].cpu()[keep],
                "scores": o["scores"].float().cpu()[keep],
            }
            if "masks" in o:
                p["masks"] = (o["masks"][:, 0] > MASK_THRESHOLD).cpu()[keep]
            predictions.append(p)
        return predictions

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """COCO box mAP (the 12 COCOeval stats; + ``segm_*`` mask stats) or VOC mAP (+ ``AP_<class>``).

        The results of all ranks are gathered; only rank 0 returns numbers.
        """
        dataset: Any = loader.dataset
        coco = self.cfg.eval.metric == "coco"
        segm: CocoEvaluator | None = None
        if coco:
            evaluator: Any = CocoEvaluator(dataset.coco_ground_truth())
            segm = CocoEvaluator(evaluator.coco_gt, iou_type="segm") if self.with_masks else None
        else:
            evaluator = VOCEvaluator(dataset.class_names, use_07_metric=self.cfg.eval.metric == "voc07")
        for images, targets in loader:
            outputs = self.predict(model, images, device)
            if coco:
                ids = [int(t["image_id"]) for t in targets]
                results = detections_to_coco_results(outputs, ids, dataset.label_to_cat_id)
                evaluator.update(results, image_ids=ids)
                if segm is not None:
                    segm.update(results, image_ids=ids)
            else:
                evaluator.update(outputs, targets)
        evaluator.synchronize()  # every rank takes part; only rank 0's numbers are used
        if segm is not None:
            segm.synchronize()
        if not self.dist.is_main:
            return {}
        if coco:
            metrics = evaluator.summarize()
            if segm is not None:
                metrics.update({SEGM_PREFIX + k: v for k, v in segm.summarize().items()})
            return metrics
        summary = evaluator.summarize()
        metrics = {"mAP": float(summary["mAP"])}
        metrics.update({f"AP_{name}": float(ap) for name, ap in summary["per_class_AP"].items()})
        return metrics

    def draw_predictions(self, model: nn.Module, dataset: Dataset, out_dir: str | os.PathLike, num: int) -> list[Path]:
        """PNGs of ground truth (left) and detections scoring >= ``eval.score_threshold`` (right), masks included."""
        files = []
        names = getattr(dataset, "class_names", None) or self.class_names
        for i in range(min(num, len(dataset))):  # type: ignore[arg-type]
            image, target = dataset[i]
            output = self.predict(model, [image], self.device)[0]
            canvas = render_image(image)  # 8-bit RGB view of any channel count / intensity range
            truth = draw_detections(
                canvas, target["boxes"], target["labels"], class_names=names, masks=target.get("masks")
            )
            pred = draw_detections(
                canvas,
                output["boxes"],
                output["labels"],
                output["scores"],
                class_names=names,
                score_threshold=self.cfg.eval.score_threshold,
                masks=output.get("masks"),
            )
            shown = output["scores"] >= self.cfg.eval.score_threshold
            legend = legend_entries([*target["labels"].tolist(), *output["labels"][shown].tolist()], names)
            picture = add_legend(hstack_images([truth, pred]), legend)
            files.append(save_png(picture, Path(out_dir) / f"{i:03d}_image{target['image_id']}.png"))
        return files


def _check_kwargs(name: str, extra: dict[str, Any]) -> None:
    """Reject ``model.kwargs`` keys that neither the builder nor its torchvision model class knows.

    torchvision's detectors pass unknown keywords on to their transform, which drops them silently, so a
    misspelt option would otherwise have no effect.
    """
    known: set[str] = set()
    classes = [c.__init__ for c in DETECTION_MODEL_TYPES[name].__mro__ if "__init__" in vars(c) and c is not object]
    for fn in (DETECTION_MODELS[name], *classes, GeneralizedRCNNTransform.__init__):
        params = inspect.signature(fn).parameters.values()
        known |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    known -= {"self", "_skip_resize"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ConfigError(
            f"model.kwargs.{unknown[0]}: not an option of {name} or torchvision's "
            f"{DETECTION_MODEL_TYPES[name].__name__} (see their signatures)"
        )


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A ``tv_tensors`` subclass as a plain tensor (the model's own transforms expect plain tensors)."""
    return tensor.as_subclass(torch.Tensor) if type(tensor) is not torch.Tensor else tensor


def _to_channels_last(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: the backbone's input batch in channels_last memory format."""
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


__all__ = ["ASPECT_RATIO_GROUP_FACTOR", "MAIN_METRICS", "DetectionTask"]
