"""U-Net builders (segmentation-models-pytorch) with Squeeze-and-Excitation in the encoder and the decoder.

- Encoder SE: in the residual blocks of smp's native ResNet/ResNeXt encoders (``"resnet34"``) and of timm
  ResNet-family encoders (``"tu-resnet50d"``), through :func:`se_plugins.add_se`. ``"tu-se_plugin_<arch>"``
  encoders have SE built in (the SE options go to timm) and get nothing added.
- Decoder SE: a :class:`~se_plugins.SqueezeExcite` after the two convs of every U-Net decoder block, in
  smp's own attention slot, so its keys are ``decoder.blocks.<i>.attention2.attention.fc1.weight`` (``fc1``/
  ``fc2`` ``weight``/``bias``, ``gate_gain``), where ``decoder_attention_type="scse"`` puts its SCSE module.

Encoder weights: ``None`` (random); ``"imagenet"`` / ``True``: the base architecture's weights (smp's hub
weights for native encoders; timm's default pretrained tag, or the tag in the name, for ``tu-`` encoders),
read from the Hugging Face / torch cache and downloaded when missing; or the path of a local state-dict file
of the base architecture (timm/torchvision ResNet keys, ``.pth``/``.safetensors``). A failed download raises
a one-line :class:`~se_plugins.errors.SEPluginsError` naming the encoder, the weights and how to pass a local
file (with ``HF_HUB_OFFLINE=1`` it fails at once instead of after the hub's retries).

Plain ``smp.Unet("tu-se_plugin_resnet34", ...)`` works too (any ``encoder_depth``, ``in_channels``,
``output_stride``). There smp's default ``encoder_weights="imagenet"`` goes to timm unchanged (it downloads
or raises the hub's own error); a local file is passed as
``encoder_weights=True, pretrained_cfg_overlay=dict(file=PATH)``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from segmentation_models_pytorch.base.modules import Attention
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders import get_encoder
from segmentation_models_pytorch.encoders.resnet import resnet_encoders as smp_resnet_encoders
from torch import nn

from .errors import SEPluginsError
from .insert import SEPosition, add_se, has_se, iter_se_blocks, se_modules
from .layers import SE_INITS, SEInit, SqueezeExcite
from .models import PREFIX

__all__ = ["SEGMENTATION_MODELS", "SEUnet", "add_decoder_se", "decoder_se_modules", "se_unet", "unet"]

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
TIMM_PREFIX = "tu-"
SUPPORTED_ENCODERS = (
    f"smp ResNet encoders ({', '.join(smp_resnet_encoders)}), smp 'mobilenet_v2', 'densenet*', 'vgg*', 'dpn*', "
    "'inceptionv4', 'inceptionresnetv2', 'xception', "
    "'tu-<timm ResNet family>' (tu-resnet50d, tu-resnext50_32x4d, tu-wide_resnet50_2, ...), 'tu-resnetv2_*', "
    "'tu-regnetx_*', 'tu-mobilenetv2_*' (and the other SE-less efficientnet-builder nets), 'tu-densenet*', "
    "timm's CSPNet/DarkNet, BYOB (RepVGG, MobileOne, ...) and ConvNeXt encoders without attention, and "
    "'tu-se_plugin_<arch>' (SE built in)"
)


# --------------------------------------------------------------------------------------------- decoder SE
def _decoder_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """U-Net (and U-Net++) decoder blocks: modules with smp's ``attention2`` slot after their ``conv2``."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "attention2", None), Attention)
        and isinstance(getattr(m, "conv2", None), nn.Module)
    ]


def add_decoder_se(model: nn.Module, *, reduction: float = 16, init: SEInit = "identity") -> nn.Module:
    """Put SE after the two convs of every U-Net decoder block of ``model`` (in place) and return ``model``.

    The SE fills smp's ``attention2`` slot: its keys are ``decoder.blocks.<i>.attention2.attention.*`` and
    every existing key stays. With ``init="identity"`` the model computes exactly the same function as before.

    Args:
        model: An ``smp.Unet`` (or ``UnetPlusPlus``), or its decoder.
        reduction: SE reduction ratio r (hidden width ``make_divisible(C / r, 8)``).
        init: ``"identity"`` (gates start at 1) or ``"random"`` (the paper's initialisation).

    Returns:
        ``model``.

    Raises:
        ValueError: no U-Net decoder block, a slot that already holds attention, or a bad ``init``.

    Example:
        >>> import segmentation_models_pytorch as smp
        >>> model = add_decoder_se(smp.Unet("resnet18", encoder_weights=None))
        >>> "decoder.blocks.0.attention2.attention.fc1.weight" in model.state_dict()
        True
    """
    if init not in SE_INITS:
        raise ValueError(f"add_decoder_se: init must be one of {SE_INITS}, got {init!r}")
    blocks = _decoder_blocks(model)
    if not blocks:
        raise ValueError(
            f"add_decoder_se: {type(model).__name__} has no smp U-Net decoder block (attention2 slot)"
        )
    for name, block in blocks:
        current = block.attention2.attention
        if not isinstance(current, nn.Identity):
            raise ValueError(
                f"add_decoder_se: {name}.attention2 already holds {type(current).__name__}; build the model "
                "with decoder_attention_type=None to put SE there"
            )
    for _, block in blocks:
        conv = block.conv2[0] if isinstance(block.conv2, nn.Sequential) else block.conv2
        se = SqueezeExcite(
            conv.out_channels, reduction, init=init, device=conv.weight.device, dtype=conv.weight.dtype
        )
        block.attention2.attention = se
    return model


def decoder_se_modules(model: nn.Module) -> dict[str, SqueezeExcite]:
    """The decoder SE modules of ``model`` by qualified name (``decoder.blocks.<i>.attention2.attention``)."""
    return {name: m for name, m in se_modules(model).items() if name.endswith("attention2.attention")}


# ---------------------------------------------------------------------------------------- encoder weights
def _is_timm(encoder_name: str) -> bool:
    return encoder_name.startswith(TIMM_PREFIX)


def _resolve_weights(caller: str, encoder_name: str, weights: Any) -> str | Path | None:
    """``None``, a pretrained tag (``"imagenet"``, smp's ``"ssl"``...) or the ``Path`` of an existing file."""
    if weights is None or weights is False:
        return None
    if weights is True:
        return "imagenet"
    if isinstance(weights, os.PathLike):
        path = Path(weights)
    elif isinstance(weights, str):
        tags = {"imagenet"}
        if not _is_timm(encoder_name) and encoder_name in smp_encoders:
            tags |= set(smp_encoders[encoder_name]["pretrained_settings"])
        if weights in tags:
            return weights
        path = Path(weights)
    else:
        raise SEPluginsError(
            f"{caller}: encoder_weights must be None, 'imagenet', True or a path, got {weights!r}"
        )
    if not path.is_file():
        raise SEPluginsError(
            f"{caller}: encoder_weights {str(weights)!r} is neither a pretrained tag ('imagenet') nor an "
            f"existing file (encoder {encoder_name!r})"
        )
    return path


def _weights_source(encoder_name: str, tag: str) -> tuple[str, str]:
    """(base architecture, where its pretrained weights come from; "" if nowhere), for messages."""
    if not _is_timm(encoder_name):
        settings = smp_encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(tag, {})
        return encoder_name, f"hf-hub:{settings['repo_id']}" if "repo_id" in settings else ""
    timm_name = encoder_name[len(TIMM_PREFIX) :]
    arch = timm_name.split(".")[0]
    base = arch.removeprefix(PREFIX)
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return base, ""
    if cfg.file:
        return base, str(cfg.file)
    if cfg.hf_hub_id:
        return base, f"hf-hub:{cfg.hf_hub_id}"
    return base, cfg.url or ""


def _is_download_error(err: BaseException | None) -> bool:
    """Whether ``err`` or what caused it is a hub / network / cache failure (all are ``OSError``s)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):  # hub errors, LocalEntryNotFoundError, URLError, socket errors
            return True
        err = err.__cause__ or err.__context__
    return False


def _download_error(caller: str, encoder_name: str, tag: str, err: BaseException) -> SEPluginsError:
    base, source = _weights_source(encoder_name, tag)
    kind = "timm" if _is_timm(encoder_name) else "torchvision/timm"
    return SEPluginsError(
        f"{caller}: cannot load pretrained weights for encoder {encoder_name!r}: the base weights {source!r} "
        f"(of {base!r}) are not in the local cache and could not be downloaded ({type(err).__name__}); "
        f"download them once with network access or pass a local file: "
        f"encoder_weights='path/to/{base}.pth' (a {kind} {base!r} state dict)"
    )


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_native_encoder_file(caller: str, model: smp.Unet, name: str, path: Path, in_channels: int) -> None:
    """Load a torchvision/timm ResNet state dict into smp's native encoder (first conv adapted like timm)."""
    try:
        state_dict = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as err:
        raise SEPluginsError(
            f"{caller}: cannot read encoder_weights file {str(path)!r}: {_one_line(err)}"
        ) from None
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    if in_channels != 3 and "conv1.weight" in state_dict:
        state_dict["conv1.weight"] = timm.models.adapt_input_conv(in_channels, state_dict["conv1.weight"])
    try:
        model.encoder.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise SEPluginsError(
            f"{caller}: encoder_weights file {str(path)!r} does not fit encoder {name!r}: {_one_line(err)}"
        ) from None


def _build_unet(
    caller: str,
    encoder_name: str,
    classes: int,
    *,
    in_channels: int,
    encoder_depth: int,
    encoder_weights: Any,
    decoder_channels: Sequence[int],
    encoder_output_stride: int,
    activation: str | Callable | None,
    timm_kwargs: dict[str, Any],
    unet_kwargs: dict[str, Any],
    build: Callable[..., smp.Unet] = smp.Unet,
) -> smp.Unet:
    """Build an ``smp.Unet`` (with ``build``) and load ``encoder_weights`` as described in the module docstring."""
    weights = _resolve_weights(caller, encoder_name, encoder_weights)
    if "output_stride" in unet_kwargs:  # smp's own name for it
        stride = unet_kwargs.pop("output_stride")
        if encoder_output_stride not in (32, stride):
            raise ValueError(
                f"{caller}: encoder_output_stride={encoder_output_stride} and output_stride={stride} disagree"
            )
        encoder_output_stride = stride
    kwargs = dict(
        encoder_name=encoder_name,
        encoder_depth=encoder_depth,
        decoder_channels=tuple(decoder_channels)[:encoder_depth],
        in_channels=in_channels,
        classes=classes,
        activation=activation,
        output_stride=encoder_output_stride,
        **unet_kwargs,
    )
    if _is_timm(encoder_name):
        kwargs.update(timm_kwargs)
        if weights == "imagenet" and not _weights_source(encoder_name, weights)[1]:
            raise SEPluginsError(
                f"{caller}: timm has no pretrained weights for encoder {encoder_name!r}; use "
                "encoder_weights=None or the path of a local state-dict file"
            )
        if isinstance(weights, str) and weights != "imagenet":
            raise SEPluginsError(
                f"{caller}: encoder_weights={weights!r} is not supported for timm encoder {encoder_name!r}: "
                "use 'imagenet'/True (put the tag in the name: 'tu-resnet50.a1_in1k') or a file path"
            )
        if isinstance(weights, Path):
            overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
            kwargs["pretrained_cfg_overlay"] = {**overlay, "file": str(weights)}
        kwargs["encoder_weights"] = True if weights is not None else None
    else:
        kwargs["encoder_weights"] = weights if isinstance(weights, str) else None
    try:
        model = build(**kwargs)
    except Exception as err:
        if isinstance(weights, str) and _is_download_error(err):
            raise _download_error(caller, encoder_name, weights, err) from None
        if isinstance(weights, Path) and isinstance(err, RuntimeError | KeyError | OSError):
            raise SEPluginsError(
                f"{caller}: cannot load encoder_weights file {str(weights)!r} into encoder {encoder_name!r}: "
                f"{_one_line(err)}"
            ) from None
        raise
    if isinstance(weights, Path) and not _is_timm(encoder_name):
        _load_native_encoder_file(caller, model, encoder_name, weights, in_channels)
    return model


def _add_encoder_se(caller: str, model: smp.Unet, encoder_name: str, **se_options: Any) -> None:
    if next(iter_se_blocks(model.encoder), None) is None:
        # a timm encoder with encoder_depth=1 keeps only its stem: nothing to add if the full encoder is fine
        with torch.device("meta"):
            probe = get_encoder(encoder_name, weights=None)
        if next(iter_se_blocks(probe), None) is None:
            raise SEPluginsError(
                f"{caller}: encoder {encoder_name!r} has no residual block to put SE into (se_encoder=True); "
                f"supported encoders: {SUPPORTED_ENCODERS}"
            )
        return
    if not has_se(model.encoder):  # encoders with their own SE (tu-seresnet50, ...) keep it
        add_se(model.encoder, **se_options)


# ------------------------------------------------------------------------------------------------ builders
class SEUnet(smp.Unet):
    """An ``smp.Unet`` with SE in the encoder's residual blocks and after each decoder block.

    The class :func:`se_unet` returns. It is an ``smp.Unet`` in every way, and smp's ``save_pretrained`` /
    ``from_pretrained`` rebuild it with its SE options: ``SEUnet.from_pretrained(DIR)``, or
    ``smp.from_pretrained(DIR)`` (importing se_plugins makes the name ``SEUnet`` known to smp). The saved config
    records ``encoder_weights=None`` and the resolved ``se_init``: the saved state dict holds every weight, so a
    reload never fetches encoder weights again.

    Args:
        encoder_name: A native smp ResNet/ResNeXt (``"resnet34"``), a timm ResNet-family model
            (``"tu-resnet50d"``, optionally tagged: ``"tu-resnet50d.ra2_in1k"``) or an SE plugin model
            (``"tu-se_plugin_resnet34"``, SE built in).
        classes: Number of output channels (classes) of the segmentation head.
        in_channels: Number of input channels (a pretrained first conv is adapted as timm does).
        encoder_depth: Number of encoder stages used, 1..5.
        encoder_weights: ``None`` (random), ``"imagenet"``/``True`` (base weights from cache or download;
            also smp's ``"ssl"``/``"swsl"`` for native encoders) or the path of a base-architecture
            state dict.
        decoder_channels: Output channels of the decoder blocks (the first ``encoder_depth`` are used).
        encoder_output_stride: 32, 16 or 8 (the last stages dilated).
        se_encoder: Put SE into the encoder's residual blocks (encoders with their own SE keep theirs).
        se_decoder: Put SE after each decoder block (``decoder.blocks.<i>.attention2.attention``).
        reduction: SE reduction ratio r (encoder and decoder).
        se_stages: Encoder stages (1..4) that get SE; ``None`` = all.
        se_position: SE position in the encoder blocks: ``"standard"``, ``"pre"``, ``"post"``, ``"identity"``;
            ``None``: each block family's own (``"standard"``; ``"post"`` for DenseNet/VGG, no residual add).
        se_init: ``"identity"`` or ``"random"`` for every new SE; ``None``: ``"identity"`` with
            ``encoder_weights`` (the pretrained function is kept), ``"random"`` (the paper's) without.
        activation: Activation of the segmentation head (smp's: ``None``, ``"sigmoid"``, ``"softmax2d"``...).
        **unet_kwargs: More ``smp.Unet`` arguments (``decoder_use_norm``, ``decoder_interpolation``,
            ``aux_params``...) and, for ``tu-`` encoders, timm ``create_model`` ones (``drop_path_rate``).

    Raises:
        SEPluginsError: weights that cannot be loaded (one line: the encoder, the weights, how to pass a
            file); ``se_encoder=True`` with an encoder without supported residual blocks (lists them).
        ValueError: bad SE options, or ``se_encoder=False`` with a ``tu-se_plugin_*`` encoder.

    Example:
        >>> model = SEUnet("resnet18", classes=5)
        >>> model.save_pretrained("se-unet")  # doctest: +SKIP
        >>> same = SEUnet.from_pretrained("se-unet")  # doctest: +SKIP
    """

    def __init__(
        self,
        encoder_name: str = "resnet34",
        classes: int = 1,
        *,
        in_channels: int = 3,
        encoder_depth: int = 5,
        encoder_weights: str | os.PathLike | bool | None = None,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        encoder_output_stride: int = 32,
        se_encoder: bool = True,
        se_decoder: bool = True,
        reduction: float = 16,
        se_stages: Sequence[int] | None = None,
        se_position: SEPosition | None = None,
        se_init: SEInit | None = None,
        activation: str | Callable | None = None,
        **unet_kwargs: Any,
    ) -> None:
        caller = "se_unet"
        unet_kwargs = {k: v for k, v in unet_kwargs.items() if not k.startswith("_")}  # smp's hub keys
        if se_init is not None and se_init not in SE_INITS:
            raise ValueError(f"{caller}: se_init must be one of {SE_INITS} or None, got {se_init!r}")
        timm_arch = encoder_name.removeprefix(TIMM_PREFIX) if _is_timm(encoder_name) else ""
        builtin_se = timm_arch.startswith(PREFIX)
        if builtin_se and not se_encoder:
            raise ValueError(
                f"{caller}: se_encoder=False contradicts encoder {encoder_name!r} (SE built in); use "
                f"{TIMM_PREFIX + timm_arch.removeprefix(PREFIX)!r} for an encoder without SE"
            )
        if se_decoder and unet_kwargs.get("decoder_attention_type") is not None:
            raise ValueError(
                f"{caller}: se_decoder=True puts SE in the decoder's attention slot: drop decoder_attention_type"
            )
        init = se_init or ("identity" if encoder_weights is not None and encoder_weights is not False else "random")
        se_options = dict(reduction=reduction, stages=se_stages, position=se_position, init=init)
        # tu-se_plugin_* encoders take the SE options as timm create_model arguments (se_reduction, ...)
        timm_kwargs = {f"se_{key}": value for key, value in se_options.items()} if builtin_se else {}

        def build(**kwargs: Any) -> SEUnet:
            smp.Unet.__init__(self, **kwargs)
            return self

        _build_unet(
            caller,
            encoder_name,
            classes,
            in_channels=in_channels,
            encoder_depth=encoder_depth,
            encoder_weights=encoder_weights,
            decoder_channels=decoder_channels,
            encoder_output_stride=encoder_output_stride,
            activation=activation,
            timm_kwargs=timm_kwargs,
            unet_kwargs=unet_kwargs,
            build=build,
        )
        if se_encoder and not builtin_se:
            _add_encoder_se(caller, self, encoder_name, **se_options)
        if se_decoder:
            add_decoder_se(self, reduction=reduction, init=init)
        if isinstance(self._hub_mixin_config, dict):  # what from_pretrained rebuilds: weights come from the file
            self._hub_mixin_config.update(encoder_weights=None, se_init=init)


smp.SEUnet = SEUnet  # smp.from_pretrained resolves the saved "_model_class" by name in smp's namespace


def se_unet(encoder_name: str, classes: int = 1, **kwargs: Any) -> SEUnet:
    """An ``smp.Unet`` with SE in the encoder's residual blocks and after each decoder block: :class:`SEUnet`.

    Takes the arguments of :class:`SEUnet` (``in_channels``, ``encoder_depth``, ``encoder_weights``,
    ``decoder_channels``, ``encoder_output_stride``, ``se_encoder``, ``se_decoder``, ``reduction``, ``se_stages``,
    ``se_position``, ``se_init``, ``activation`` and more ``smp.Unet`` / timm arguments).

    Example:
        >>> model = se_unet("resnet18", classes=5)
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 5, 64, 64])
        >>> "decoder.blocks.0.attention2.attention.fc1.weight" in model.state_dict()
        True
    """
    return SEUnet(encoder_name, classes, **kwargs)


_init_signature = inspect.signature(SEUnet.__init__)
se_unet.__signature__ = _init_signature.replace(  # the keywords of SEUnet, for callers that inspect them
    parameters=list(_init_signature.parameters.values())[1:], return_annotation=SEUnet
)


def unet(
    encoder_name: str,
    classes: int = 1,
    *,
    in_channels: int = 3,
    encoder_depth: int = 5,
    encoder_weights: str | os.PathLike | bool | None = None,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    encoder_output_stride: int = 32,
    activation: str | Callable | None = None,
    **unet_kwargs: Any,
) -> smp.Unet:
    """A plain ``smp.Unet`` (no SE added): the arguments and the weight handling of :func:`se_unet`.

    Example:
        >>> unet("resnet18", classes=2)(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
    """
    return _build_unet(
        "unet",
        encoder_name,
        classes,
        in_channels=in_channels,
        encoder_depth=encoder_depth,
        encoder_weights=encoder_weights,
        decoder_channels=decoder_channels,
        encoder_output_stride=encoder_output_stride,
        activation=activation,
        timm_kwargs={},
        unet_kwargs=unet_kwargs,
    )


SEGMENTATION_MODELS: dict[str, Callable[..., smp.Unet]] = {"se_unet": se_unet, "unet": unet}
"""Segmentation model builders by name (the training config's model name)."""
