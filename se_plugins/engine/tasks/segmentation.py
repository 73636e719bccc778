"""Semantic segmentation task: U-Net (smp) with SE, VOC / COCO / shapes data, CE / Dice / Focal losses, mIoU.

Selected by ``task: segmentation``. What the config keys mean here:

- ``data.format``: ``voc`` (``VOCSegmentation`` on ``data.root``, splits ``data.train_split`` /
  ``data.val_split``), ``coco`` (``CocoSegmentation``: semantic masks from instance annotations) or ``shapes``
  (the built-in synthetic data, generated into ``data.root`` on first use and read through the VOC reader).
  ``data.classes``: class names indexed by mask value, background first (for COCO the category names, with or
  without a leading ``"background"``); null = the data set's own.
- ``data.crop_size``: random square training crop after a random rescale of the shorter side to
  ``[0.5, 2] x (data.image_size or data.crop_size)`` (torchvision's reference recipe); null = whole images.
  ``data.image_size``: shorter side the images are resized to (training without crop and evaluation; the
  logits are resized back, so metrics are always computed on the original masks); null = keep the size.
- ``model.name``: a builder of ``se_plugins.segmentation.SEGMENTATION_MODELS`` (``se_unet``, ``unet``);
  ``model.backbone`` its encoder; ``model.se.*`` the SE options; ``model.kwargs`` more builder arguments
  (``decoder_channels``, ``encoder_depth``...); ``model.pretrained_backbone`` a local encoder weights file.
- ``loss.name``: ``ce`` | ``dice`` | ``focal`` | ``ce+dice`` (``ce + loss.dice_weight * dice``), all with
  ``loss.ignore_index``.
- ``eval.metric`` is not read: this task always reports mIoU, pixel_acc, mAcc and ``IoU/<class>``.

Images are decoded by ``data.channels`` / ``data.alpha`` / ``data.intensity*`` (``ImageReader``); the model gets
``in_channels = data.channels`` (smp/timm adapt a pretrained first conv). Images are normalised with ``data.mean``
/ ``data.std`` (null: ImageNet's for 3 channels, 0.449 / 0.226 for 1) inside the task and padded (bottom/right:
image 0, mask ``ignore_index``) to a multiple of the encoder's output stride; logits are cropped back, so the model sees
every pixel at its original position and evaluation is exact. Evaluation runs on full-size validation images
(a batch holds images of one size), accumulates one confusion matrix per rank and sums them across ranks.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models import ResNet
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from se_plugins.engine.config import config_classes
from se_plugins.engine.distributed import main_process_first
from se_plugins.engine.tasks.base import IMAGENET_MEAN, IMAGENET_STD, Task  # noqa: F401 (the defaults, re-exported)
from se_plugins.engine.tasks.worker_errors import ReportErrors, first_failure, raise_failure
from se_plugins.errors import ConfigError, DataError, SEPluginsError

SCALE_RANGE = (0.5, 2.0)
"""Random rescale range of the training crop recipe, relative to ``data.image_size or data.crop_size``."""


class SegmentationTask(Task):
    """Train and evaluate a semantic segmentation model (see the module docstring for the config keys).

    Attributes:
        class_names: Class names indexed by label (background first), known after the data is built.
    """

    main_metric = "mIoU"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.class_names: list[str] | None = None
        self._shapes_root: Path | None = None

    # ------------------------------------------------------------------------------------------ data

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """``(train, val)`` data sets of ``(image, mask)`` samples (the shapes data is generated if absent)."""
        train = self._dataset(train=True)
        val = self._dataset(train=False)
        if train.class_names != val.class_names:  # type: ignore[attr-defined]
            raise DataError(
                f"training classes {train.class_names} differ from validation classes "  # type: ignore[attr-defined]
                f"{val.class_names}; set data.classes"  # type: ignore[attr-defined]
            )
        return ReportErrors(train), ReportErrors(val)

    def build_val_dataset(self) -> Dataset:
        """The validation data set alone (``se-plugins eval``)."""
        return ReportErrors(self._dataset(train=False))

    def _dataset(self, train: bool) -> Dataset:
        dcfg = self.cfg.data
        if self.cfg.loss.ignore_index != 255:
            raise ConfigError(
                f"loss.ignore_index: the built-in data readers mark ignored pixels with 255, got "
                f"{self.cfg.loss.ignore_index}"
            )
        transforms = self.train_transforms() if train else self.eval_transforms()
        classes = config_classes(dcfg)
        if classes == "auto":
            if dcfg.format == "voc":
                raise ConfigError(
                    "data.classes: 'auto' cannot be read from VOC mask PNGs (they hold indices, not names); "
                    "list the names, background first, or use null for the 21 VOC classes"
                )
            classes = None
        if dcfg.format == "coco":
            from se_plugins.data import CocoSegmentation

            images = dcfg.train_images if train else dcfg.val_images
            annotations = dcfg.train_annotations if train else dcfg.val_annotations
            which = "train" if train else "val"
            img_dir = self._under_root(images, f"data.{which}_images")
            ann_file = self._under_root(annotations, f"data.{which}_annotations")
            if classes and classes[0] == "background":
                classes = classes[1:]
            dataset = CocoSegmentation(
                img_dir,
                ann_file,
                transforms=transforms,
                classes=classes or None,
                keep_background_category=dcfg.keep_background_category,
                image_reader=self.image_reader(),
            )
        else:
            from se_plugins.data import SHAPE_CLASSES, VOCSegmentation

            if dcfg.root is None:
                raise ConfigError(f"data.root: required for data.format={dcfg.format}")
            root = Path(dcfg.root)
            if dcfg.format == "shapes":
                root = self._make_shapes()
                classes = classes or ["background", *SHAPE_CLASSES]
            split = dcfg.train_split if train else dcfg.val_split
            dataset = VOCSegmentation(
                root, split, classes=classes, transforms=transforms, image_reader=self.image_reader()
            )
        names = list(dataset.class_names)  # type: ignore[attr-defined]
        if self.cfg.model.num_classes is not None and self.cfg.model.num_classes != len(names):
            raise ConfigError(
                f"model.num_classes: {self.cfg.model.num_classes} does not match the {len(names)} classes of "
                f"the data ({', '.join(names)}); set it to null to take the number from the data"
            )
        self.class_names = names
        self.check_first_item(dataset)
        return dataset

    def _make_shapes(self) -> Path:
        """Generate the shapes data into ``data.root`` once (rank 0 first); return its VOC root."""
        if self._shapes_root is None:
            from se_plugins.data import make_shapes

            s = self.cfg.data.shapes
            with main_process_first():
                try:
                    paths = make_shapes(
                        self.cfg.data.root,
                        num_train=s.num_train,
                        num_val=s.num_val,
                        image_size=s.image_size,
                        seed=s.seed,
                    )
                except ValueError as e:
                    if isinstance(e, SEPluginsError):
                        raise
                    raise ConfigError(f"data.shapes: {e}") from None
            self._shapes_root = paths.voc_root
        return self._shapes_root

    def _under_root(self, path: str | None, key: str) -> Path:
        if path is None:
            raise ConfigError(f"{key}: required for data.format=coco")
        p = Path(path)
        return p if p.is_absolute() or self.cfg.data.root is None else Path(self.cfg.data.root) / p

    def train_transforms(self) -> Callable:
        """Training preset: rescale + crop (``data.crop_size``) or resize (``data.image_size``), flip."""
        dcfg = self.cfg.data
        if dcfg.crop_size:
            from se_plugins.data import segmentation_transforms

            return segmentation_transforms(
                True,
                crop_size=dcfg.crop_size,
                scale_range=SCALE_RANGE,
                hflip_prob=dcfg.hflip_prob,
                base_size=dcfg.image_size or dcfg.crop_size,
            )
        ops: list[Any] = [v2.ToImage()]
        if dcfg.image_size:
            ops.append(v2.Resize(dcfg.image_size))
        if dcfg.hflip_prob > 0:
            ops.append(v2.RandomHorizontalFlip(dcfg.hflip_prob))
        ops.append(v2.ToDtype(torch.float32, scale=True))
        return v2.Compose(ops)

    def eval_transforms(self) -> Callable:
        """Evaluation preset: the original image and mask (resizing and padding happen in ``predict``)."""
        return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def collate(self, batch: Sequence[Any]) -> Any:
        """``(images, masks)`` as lists (sizes may differ; ``train_step``/``evaluate`` pad them)."""
        failure = first_failure(batch)
        if failure is not None:
            return failure
        images, masks = zip(*batch, strict=True) if batch else ((), ())
        return [img.as_subclass(torch.Tensor) for img in images], [m.as_subclass(torch.Tensor) for m in masks]

    # ------------------------------------------------------------------------------------------ model

    @property
    def num_classes(self) -> int:
        """Number of classes: ``model.num_classes`` or the number of the data set's class names."""
        if self.cfg.model.num_classes is not None:
            return int(self.cfg.model.num_classes)
        if self.class_names is None:
            self._dataset(train=False)
        assert self.class_names is not None
        return len(self.class_names)

    def build_model(self) -> nn.Module:
        """The ``model.name`` builder with ``model.backbone``, the SE options and ``model.kwargs``."""
        from se_plugins.segmentation import SEGMENTATION_MODELS

        mcfg = self.cfg.model
        builder = SEGMENTATION_MODELS.get(mcfg.name)
        if builder is None:
            raise ConfigError(
                f"model.name: {mcfg.name!r} is not a segmentation model ({', '.join(SEGMENTATION_MODELS)})"
            )
        if not mcfg.backbone:
            raise ConfigError("model.backbone: required (the encoder, e.g. resnet18 or tu-se_plugin_resnet50)")
        kwargs: dict[str, Any] = dict(OmegaConf.to_container(mcfg.kwargs, resolve=True))  # type: ignore[arg-type]
        kwargs["encoder_weights"] = mcfg.pretrained_backbone
        for key in ("in_channels", "in_chans"):
            if key in kwargs:
                raise ConfigError(f"model.kwargs.{key}: set data.channels instead")
        kwargs["in_channels"] = int(self.cfg.data.channels)  # smp/timm adapt a pretrained first conv
        se = mcfg.se
        if "se_encoder" in inspect.signature(builder).parameters:
            kwargs.update(
                se_encoder=se.enabled and se.encoder,
                se_decoder=se.enabled and se.decoder,
                reduction=se.reduction,
                se_stages=list(se.stages) if se.stages is not None else None,
                se_position=se.position,
                se_init=se.init,
            )
        elif se.enabled:
            raise ConfigError(
                f"model.se.enabled: model {mcfg.name!r} has no SE options; set model.se.enabled=false "
                "or use model.name=se_unet"
            )
        try:
            model = builder(mcfg.backbone, self.num_classes, **kwargs)
        except (ValueError, TypeError) as e:
            if isinstance(e, SEPluginsError):
                raise
            raise ConfigError(f"model ({mcfg.name}, {mcfg.backbone}): {' '.join(str(e).split())}") from None
        return drop_unused_encoder_stages(model)

    # ------------------------------------------------------------------------------------------ training

    def loss_terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The configured loss of ``logits [N, C, H, W]`` against ``target [N, H, W]`` and its parts."""
        lcfg = self.cfg.loss
        if lcfg.name == "ce":
            return {"loss": self._ce(logits, target)}
        if lcfg.name == "dice":
            return {"loss": self._smp_loss("dice")(logits, target)}
        if lcfg.name == "focal":
            return {"loss": self._smp_loss("focal")(logits, target)}
        ce = self._ce(logits, target)
        dice = self._smp_loss("dice")(logits, target)
        return {"loss": ce + lcfg.dice_weight * dice, "loss_ce": ce.detach(), "loss_dice": dice.detach()}

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy averaged over the non-ignored pixels (0, not NaN, when all are ignored)."""
        ignore = self.cfg.loss.ignore_index
        total = F.cross_entropy(logits.float(), target, ignore_index=ignore, reduction="sum")
        return total / (target != ignore).sum().clamp(min=1)

    def _smp_loss(self, name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        cache = self.__dict__.setdefault("_losses", {})
        if name not in cache:
            from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

            ignore = self.cfg.loss.ignore_index
            cache[name] = (
                DiceLoss("multiclass", ignore_index=ignore)
                if name == "dice"
                else FocalLoss("multiclass", gamma=self.cfg.loss.focal_gamma, ignore_index=ignore)
            )
        loss = cache[name]
        return lambda logits, target: loss(logits.float(), target)

    def train_step(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """Pad the batch to one size (mask padding ignored), forward, return the configured loss."""
        images, masks = _check_batch(batch)
        stride = _output_stride(model)
        height = _round_up(max(img.shape[-2] for img in images), stride)
        width = _round_up(max(img.shape[-1] for img in images), stride)
        x = torch.stack([self._normalize(img.to(device, non_blocking=True), height, width) for img in images])
        ignore = self.cfg.loss.ignore_index
        y = torch.stack([_pad(m.to(device, non_blocking=True), height, width, ignore) for m in masks])
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.loss_terms(model(x), y)

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, K, H, W]`` of same-size images ``[N, C, H, W]`` (or ``[C, H, W]``) in [0, 1].

        The images are normalised, resized to ``data.image_size`` (shorter side) when set, padded to a multiple
        of the encoder's output stride; the logits are cropped and resized back to ``H x W``.
        """
        if images.dim() == 3:
            images = images[None]
        images = images.as_subclass(torch.Tensor).to(self.device)
        height, width = images.shape[-2:]
        size = self.cfg.data.image_size
        if size:
            images = TF.resize(images, [size], antialias=True)
        h, w = images.shape[-2:]
        stride = _output_stride(model)
        x = self._normalize(images, _round_up(h, stride), _round_up(w, stride))
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            logits = model(x)
        logits = logits[..., :h, :w].float()
        if (h, w) != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """mIoU, pixel accuracy, mean class accuracy and per-class IoU (``IoU/<class>``) over ``loader``.

        One confusion matrix per rank, summed across ranks (each validation image is counted once).
        """
        from se_plugins.engine.evaluation import SegmentationMetric

        num_classes = self.num_classes
        names = self.class_names if self.class_names and len(self.class_names) == num_classes else None
        metric = SegmentationMetric(num_classes, ignore_index=self.cfg.loss.ignore_index, class_names=names)
        for batch in loader:
            images, masks = _check_batch(batch)
            for group in _same_size_groups(images):
                logits = self.predict(model, torch.stack([images[i] for i in group]))
                target = torch.stack([masks[i] for i in group]).to(logits.device)
                metric.update(logits.argmax(1), target)
        metric.reduce()
        result = metric.compute()
        out = {k: float(result[k]) for k in ("mIoU", "pixel_acc", "mAcc")}
        out.update({f"IoU/{name}": float(v) for name, v in result["per_class_IoU"].items()})
        return out

    def draw_predictions(self, model: nn.Module, dataset: Dataset, out_dir: str | os.PathLike, num: int) -> list[Path]:
        """PNGs of the first ``num`` validation images: image | ground truth | prediction (masks overlaid), legend."""
        from se_plugins.engine.visualize import (
            add_legend,
            draw_mask,
            hstack_images,
            mask_legend_entries,
            render_image,
            save_png,
            to_uint8,
            upscale,
            upscale_factor,
        )

        files = []
        ignore, num_classes = self.cfg.loss.ignore_index, self.num_classes
        for i in range(min(num, len(dataset))):  # type: ignore[arg-type]
            image, mask = dataset[i]
            image = image.as_subclass(torch.Tensor)
            pred = self.predict(model, image)[0].argmax(0).cpu()
            k = upscale_factor(*image.shape[-2:])  # small images: panels >= MIN_PANEL_SIZE, masks nearest-neighbour
            canvas = to_uint8(upscale(render_image(image), k))  # 8-bit RGB view of any channel count / range
            pred, mask = upscale(pred, k, nearest=True), upscale(mask.as_subclass(torch.Tensor), k, nearest=True)
            panels = [canvas, *(draw_mask(canvas, m, num_classes, ignore) for m in (mask, pred))]
            picture = add_legend(hstack_images(panels), mask_legend_entries([mask, pred], self.class_names, ignore))
            files.append(save_png(picture, Path(out_dir) / f"{i:03d}_image_gt_pred.png"))
        return files

    # ------------------------------------------------------------------------------------------ helpers

    def _normalize(self, images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Normalise ``[..., C, h, w]`` images by ``image_mean_std``; zero-pad them (bottom/right) to height x width."""
        if not hasattr(self, "_mean_std"):
            self._mean_std = self.image_mean_std()
        mean = torch.tensor(self._mean_std[0], device=images.device).view(-1, 1, 1)
        std = torch.tensor(self._mean_std[1], device=images.device).view(-1, 1, 1)
        if images.shape[-3] != mean.shape[0]:
            raise DataError(f"an image has {images.shape[-3]} channels but data.channels is {mean.shape[0]}")
        return _pad((images.float() - mean) / std, height, width, 0)


def drop_unused_encoder_stages(model: nn.Module) -> nn.Module:
    """Delete the ResNet stages an smp encoder with ``encoder_depth < 5`` never runs (in place).

    smp's native ResNet encoders keep ``layer{depth}..layer4`` although their forward stops earlier; those
    parameters never get a gradient, which DDP rejects (and the optimizer would carry). timm (``tu-``) encoders
    are already truncated by timm.
    """
    encoder = getattr(model, "encoder", None)
    depth = getattr(encoder, "_depth", None)
    if isinstance(encoder, ResNet) and isinstance(depth, int):
        for k in range(max(depth, 1), 5):
            if hasattr(encoder, f"layer{k}"):
                delattr(encoder, f"layer{k}")
    return model


def _check_batch(batch: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Raise a data error a worker reported; else return ``(images, masks)``."""
    raise_failure(batch)
    images, masks = batch
    for img, m in zip(images, masks, strict=True):
        if tuple(img.shape[-2:]) != tuple(m.shape[-2:]):
            raise DataError(f"a mask is {m.shape[-1]}x{m.shape[-2]} but its image is {img.shape[-1]}x{img.shape[-2]}")
    return images, masks


def _same_size_groups(images: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of ``images`` grouped by spatial size (in order of first appearance)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    return list(groups.values())


def _output_stride(model: nn.Module) -> int:
    """The factor input sizes must be divisible by: the encoder's output stride (32 if unknown)."""
    model = getattr(model, "module", model)  # DDP
    return int(getattr(getattr(model, "encoder", None), "output_stride", 32) or 32)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _pad(tensor: torch.Tensor, height: int, width: int, value: float) -> torch.Tensor:
    """Pad the last two dims of ``tensor`` at the bottom/right to ``height x width`` with ``value``."""
    dh, dw = height - tensor.shape[-2], width - tensor.shape[-1]
    if dh == 0 and dw == 0:
        return tensor
    return F.pad(tensor, (0, dw, 0, dh), value=value)
