"""Insert Squeeze-and-Excitation into the residual blocks of an existing ResNet-family model.

Supported blocks: timm ``BasicBlock``/``Bottleneck`` (ResNet, ResNeXt, Wide-ResNet, ResNet-D/T/S, AA/blur variants),
torchvision ``BasicBlock``/``Bottleneck`` (plain models, Faster R-CNN backbones with FrozenBatchNorm2d, smp's
ResNet encoders). A block gets SE by switching its class to an SE subclass (defined below, so models stay picklable,
compilable and exportable) and adding the submodule ``se``: existing state-dict keys never change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
import torchvision.models.resnet as tv_resnet
from timm.models import resnet as timm_resnet
from torch import nn

from .layers import SE_INITS, SEInit, SqueezeExcite

SEPosition = Literal["standard", "pre", "post", "identity"]
SE_POSITIONS = ("standard", "pre", "post", "identity")


class _SEBlockMixin:
    """Forward of a residual block with SE at ``se_position`` (the paper's integration designs, Fig. 5).

    - ``standard``: on the residual branch after its last norm, before the add (SE-ResNet).
    - ``pre``: on the residual branch's input (SE-PRE); the shortcut sees the unscaled input.
    - ``post``: after the add and the final activation (SE-POST).
    - ``identity``: on the shortcut, in parallel to the residual branch (SE-Identity).

    With ``se_fused`` (default) the standard position folds the channel scale into the residual add
    (``shortcut + branch * gate`` in one ``addcmul``), so the scaled branch is never materialised.
    """

    se: SqueezeExcite
    se_position: str
    se_fused: bool

    def residual(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - defined by each block class
        raise NotImplementedError

    def final_act(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - defined by each block class
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.se_position == "pre":
            x = self.se(x)
        out = self.residual(x)
        drop_path = getattr(self, "drop_path", None)
        if self.se_position == "standard":
            if self.se_fused and (drop_path is None or not self.training):
                gate = self.se.gate(out)
                if (
                    torch.compiler.is_compiling()
                    or torch.is_grad_enabled()
                    or not out.dtype == shortcut.dtype == gate.dtype
                ):
                    # Functional form: autograd-safe, and one fused kernel (with the ReLU) under torch.compile.
                    return self.final_act(torch.addcmul(shortcut, out, gate))
                # No autograd: write into the branch output (the norm's fresh tensor, as timm's `x += shortcut`),
                # which saves allocating and first-touching a full-size tensor.
                return self.final_act(torch.addcmul(shortcut, out, gate, out=out))
            out = self.se(out)
        elif self.se_position == "identity":
            shortcut = self.se(shortcut)
        if drop_path is not None:
            out = drop_path(out)
        out = self.final_act(out + shortcut)
        if self.se_position == "post":
            out = self.se(out)
        return out


class SETimmBasicBlock(_SEBlockMixin, timm_resnet.BasicBlock):
    """timm ``BasicBlock`` with SE."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.drop_block(self.bn1(self.conv1(x))))
        return self.bn2(self.conv2(self.aa(x)))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(x)


class SETimmBottleneck(_SEBlockMixin, timm_resnet.Bottleneck):
    """timm ``Bottleneck`` with SE."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        return self.bn3(self.conv3(x))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(x)


class SETorchvisionBasicBlock(_SEBlockMixin, tv_resnet.BasicBlock):
    """torchvision ``BasicBlock`` with SE."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)


class SETorchvisionBottleneck(_SEBlockMixin, tv_resnet.Bottleneck):
    """torchvision ``Bottleneck`` with SE."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)


# block class -> (SE class, name of the last conv of the residual branch)
SE_BLOCKS: dict[type[nn.Module], tuple[type[nn.Module], str]] = {
    timm_resnet.BasicBlock: (SETimmBasicBlock, "conv2"),
    timm_resnet.Bottleneck: (SETimmBottleneck, "conv3"),
    tv_resnet.BasicBlock: (SETorchvisionBasicBlock, "conv2"),
    tv_resnet.Bottleneck: (SETorchvisionBottleneck, "conv3"),
}
SUPPORTED = (
    "timm ResNet BasicBlock/Bottleneck (resnet*, resnext*, wide_resnet*, ResNet-D/T/S/AA/blur), torchvision "
    "ResNet BasicBlock/Bottleneck (torchvision models, Faster R-CNN backbones, smp ResNet encoders)"
)
_STAGE_RE = re.compile(r"(?:^|[._])layer(\d+)(?:[._]|$)")


def iter_residual_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module, int]]:
    """Yield ``(qualified name, block, stage)`` for every supported residual block; stage 1..4 from ``layerN``."""
    for name, module in model.named_modules():
        if type(module) in SE_BLOCKS or isinstance(module, _SEBlockMixin):
            match = _STAGE_RE.search(name)
            if match is None:
                raise ValueError(f"add_se: cannot tell the stage of block {name!r} (expected it under 'layerN')")
            yield name, module, int(match.group(1))


def has_se(model: nn.Module) -> bool:
    """Whether any residual block of ``model`` already has an SE module."""
    return any(_block_has_se(block) for _, block, _ in iter_residual_blocks(model))


def _block_has_se(block: nn.Module) -> bool:
    return isinstance(block, _SEBlockMixin) or getattr(block, "se", None) is not None


def _check_stages(stages: Iterable[int] | None) -> set[int]:
    if stages is None:
        return {1, 2, 3, 4}
    chosen = set(stages)
    if not chosen or not chosen <= {1, 2, 3, 4} or not all(isinstance(s, int) for s in chosen):
        raise ValueError(f"add_se: stages must be a non-empty subset of 1..4 (or None for all), got {stages!r}")
    return chosen


def add_se(
    model: nn.Module,
    *,
    reduction: float = 16,
    stages: Iterable[int] | None = None,
    position: SEPosition = "standard",
    init: SEInit = "identity",
    fused: bool = True,
) -> nn.Module:
    """Insert SE into every supported residual block of ``model`` (in place) and return ``model``.

    Args:
        model: A model containing timm or torchvision ResNet blocks (a classifier, a features_only model, a Faster
            R-CNN, an smp encoder or a whole smp model).
        reduction: SE reduction ratio r (hidden width ``make_divisible(C / r, 8)`` as in timm).
        stages: Which ResNet stages (1..4) get SE; ``None`` = all.
        position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"`` (the paper's ablation).
        init: ``"identity"``: the model computes exactly the same function as before (pretrained weights stay
            valid); ``"random"``: the paper's initialisation.
        fused: Fold the channel scale into the residual add (same results, less memory traffic).

    Returns:
        ``model``, with new parameters under ``<block>.se.`` and every existing state-dict key unchanged.

    Raises:
        ValueError: bad options, a model without supported blocks, or a model that already has SE.

    Example:
        >>> import timm
        >>> model = add_se(timm.create_model("resnet18"), reduction=16)
        >>> "layer1.0.se.fc1.weight" in model.state_dict()
        True
    """
    if position not in SE_POSITIONS:
        raise ValueError(f"add_se: position must be one of {SE_POSITIONS}, got {position!r}")
    if init not in SE_INITS:
        raise ValueError(f"add_se: init must be one of {SE_INITS}, got {init!r}")
    chosen = _check_stages(stages)
    blocks = list(iter_residual_blocks(model))
    if not blocks:
        raise ValueError(f"add_se: {type(model).__name__} has no supported residual block; supported: {SUPPORTED}")
    for name, block, _ in blocks:
        if _block_has_se(block):
            raise ValueError(f"add_se: {type(model).__name__} already has SE (block {name!r}); add it only once")
    for _, block, stage in blocks:
        if stage not in chosen:
            continue
        se_class, last_conv = SE_BLOCKS[type(block)]
        channels = block.conv1.in_channels if position == "pre" else getattr(block, last_conv).out_channels
        ref = block.conv1.weight
        se = SqueezeExcite(channels, reduction, init=init, device=ref.device, dtype=ref.dtype)
        block.__class__ = se_class
        block.se = se
        block.se_position = position
        block.se_fused = fused
    return model


def set_se_fused(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every SE block of ``model`` between the fused and the plain implementation (same results)."""
    for module in model.modules():
        if isinstance(module, _SEBlockMixin):
            module.se_fused = fused
    return model


def se_modules(model: nn.Module) -> dict[str, SqueezeExcite]:
    """The SE modules of ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SqueezeExcite)}
