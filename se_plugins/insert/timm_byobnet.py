"""SE adapter for the blocks of timm's BYOB networks (``byobnet``: RepVGG, MobileOne, GENet, ResNet-*ts, ...).

Every BYOB block has attention slots of its own (``attn`` inside the branch, ``attn_last`` at its end;
``nn.Identity()`` without attention), filled by timm's SE variants (``seresnet33ts``, ``seresnext26ts``,
``repvgg_d2se``, ``regnetz_*``) with timm's ``SEModule`` (ReLU, hidden ``make_divisible(C / 16, 8)``) at each block
class's default place: ``BasicBlock`` and ``DarkBlock`` at the branch end (``attn_last``, after the last conv's norm,
before the add -- the SE paper's place), ``BottleneckBlock`` and ``EdgeBlock`` in the branch (``attn``, after the kxk
conv on the middle channels), ``RepVggBlock`` and ``MobileOneBlock`` (``attn``) after their branches are summed,
before the activation. :func:`se_plugins.add_se` fills the same slot with a :class:`~se_plugins.SqueezeExcite` and
the block keeps its own forward, so a twin has the keys and the function of timm's SE variant of the same widths.
RepVGG/MobileOne re-parameterisation (``model.reparameterize()``, ``timm.utils.reparameterize_model``) fuses the
branches into one conv and keeps ``attn``, so it works unchanged with SE. No fused path (SE is timm's module call).
``SelfAttnBlock`` (attention of its own) gets no SE.
"""

import re

from timm.models import byobnet as timm_byobnet
from torch import nn

from .registry import register_se_block
from .slot_block import SESlotBlock, ShortcutModule

_STAGE_RE = re.compile(r"(?:^|\.)stages[._](\d+)\.\d+$")
_STEM_RE = re.compile(r"(?:^|\.)stem$")

# GENet has five stages (``stages.0`` .. ``stages.4``), RepVGG, MobileOne and the ResNets four
BYOBNET_STAGES = 5


def stage_from_byobnet_name(name: str) -> int | None:
    """Stage 1..5 of a block named ``...stages.<i>.<j>`` (``stages_<i>`` in timm's feature wrappers); the
    RepVGG/MobileOne stem block (``stem``, a block of the same class) counts as stage 1."""
    if _STEM_RE.search(name):
        return 1
    match = _STAGE_RE.search(name)
    return int(match.group(1)) + 1 if match else None


class SETimmByobBasicBlock(ShortcutModule, SESlotBlock, timm_byobnet.BasicBlock):
    """timm byobnet ``BasicBlock`` with SE in ``attn_last``: kxk, kxk, SE (+ shortcut), act."""

    forward = timm_byobnet.BasicBlock.forward
    se_slot = "attn_last"


class SETimmByobBottleneck(ShortcutModule, SESlotBlock, timm_byobnet.BottleneckBlock):
    """timm byobnet ``BottleneckBlock`` with SE in ``attn``: 1x1, kxk, SE, 1x1 (+ shortcut), act."""

    forward = timm_byobnet.BottleneckBlock.forward
    se_slot = "attn"


class SETimmByobDarkBlock(ShortcutModule, SESlotBlock, timm_byobnet.DarkBlock):
    """timm byobnet ``DarkBlock`` with SE in ``attn_last``: 1x1, kxk, SE (+ shortcut), act."""

    forward = timm_byobnet.DarkBlock.forward
    se_slot = "attn_last"


class SETimmByobEdgeBlock(ShortcutModule, SESlotBlock, timm_byobnet.EdgeBlock):
    """timm byobnet ``EdgeBlock`` with SE in ``attn``: kxk, SE, 1x1 (+ shortcut), act."""

    forward = timm_byobnet.EdgeBlock.forward
    se_slot = "attn"


class SETimmRepVggBlock(SESlotBlock, timm_byobnet.RepVggBlock):
    """timm ``RepVggBlock`` with SE in ``attn``: (kxk + 1x1 + identity norm, or the fused conv), SE, act."""

    forward = timm_byobnet.RepVggBlock.forward
    se_slot = "attn"


class SETimmMobileOneBlock(SESlotBlock, timm_byobnet.MobileOneBlock):
    """timm ``MobileOneBlock`` with SE in ``attn``: (kxk branches + 1x1 + identity norm, or the fused conv), SE, act."""

    forward = timm_byobnet.MobileOneBlock.forward
    se_slot = "attn"


def _conv_out(*path: str):  # noqa: ANN202
    """``channels(block, position)``: the output channels of the ConvNormAct at ``path`` (its ``.conv``)."""

    def channels(block: nn.Module, position: str) -> int:
        module = block
        for name in path:
            module = module[int(name)] if name.isdigit() else getattr(module, name)
        return module.conv.out_channels

    return channels


def _reparam_out(branch: str):  # noqa: ANN202
    """Output channels of a re-parameterisable block, before (``branch``) or after fusion (``reparam_conv``)."""
    before = _conv_out(*branch.split("."))

    def channels(block: nn.Module, position: str) -> int:
        return block.reparam_conv.out_channels if block.reparam_conv is not None else before(block, position)

    return channels


def _any_slot_filled(block: nn.Module) -> bool:
    return any(not isinstance(getattr(block, s, None), nn.Identity | None) for s in ("attn", "attn_last"))


for _block, _se_block, _channels in (
    (timm_byobnet.BasicBlock, SETimmByobBasicBlock, _conv_out("conv2_kxk")),
    (timm_byobnet.BottleneckBlock, SETimmByobBottleneck, _conv_out("conv2_kxk")),
    (timm_byobnet.DarkBlock, SETimmByobDarkBlock, _conv_out("conv2_kxk")),
    (timm_byobnet.EdgeBlock, SETimmByobEdgeBlock, _conv_out("conv1_kxk")),
    (timm_byobnet.RepVggBlock, SETimmRepVggBlock, _reparam_out("conv_kxk")),
    (timm_byobnet.MobileOneBlock, SETimmMobileOneBlock, _reparam_out("conv_kxk.0")),
):
    register_se_block(
        _block,
        _se_block,
        channels=_channels,
        positions=("standard",),
        stage=stage_from_byobnet_name,
        description=f"timm byobnet {_block.__name__} (SE in its {_se_block.se_slot!r} slot, as timm's SE variants)",
        num_stages=BYOBNET_STAGES,
        builtin_se=_any_slot_filled,
    )
