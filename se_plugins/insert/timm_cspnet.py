"""SE adapter for timm's CSPNet / CSPDarkNet / DarkNet blocks (``BottleneckBlock``, ``DarkBlock``, ``EdgeBlock``).

Each block has an attention slot of its own (``nn.Identity()`` without attention), and timm's SE variants of the
family (``sedarknet21``, ``cs3sedarknet_l/x/xdw``, ``cs3se_edgenet_x``) fill it: in ``DarkBlock`` and ``EdgeBlock``
the slot ``attn``, after the first conv's norm and activation, on the block's middle channels; in ``BottleneckBlock``
the slot ``attn2``, after the 3x3 conv (``attn3``, after the last conv, is only used with ``attn_last``, which no
timm config sets). :func:`se_plugins.add_se` fills the same slot with a :class:`~se_plugins.SqueezeExcite` whose
activation is the block's own (LeakyReLU in DarkNet, SiLU in CS3), as timm builds its SE there, and the block keeps
its own forward. So a twin has the keys (``...attn.fc1.weight``) and computes the function of timm's SE variant of
the same widths. The scale is not next to the residual add: no fused path.
"""

from timm.models import cspnet as timm_cspnet
from torch import nn

from .registry import register_se_block
from .slot_block import SESlotBlock
from .timm_resnetv2 import stage_from_stages_index

# DarkNet-53 and CSPDarkNet-53 have five stages (``stages.0`` .. ``stages.4``), the CSPResNets and CS3 models four
CSPNET_STAGES = 5


class SETimmCspBottleneck(SESlotBlock, timm_cspnet.BottleneckBlock):
    """timm cspnet ``BottleneckBlock`` with SE in ``attn2``: 1x1, 3x3, SE, 1x1 (+ shortcut)."""

    forward = timm_cspnet.BottleneckBlock.forward
    se_slot = "attn2"


class SETimmCspDarkBlock(SESlotBlock, timm_cspnet.DarkBlock):
    """timm cspnet ``DarkBlock`` with SE in ``attn``: 1x1, SE, 3x3 (+ shortcut)."""

    forward = timm_cspnet.DarkBlock.forward
    se_slot = "attn"


class SETimmCspEdgeBlock(SESlotBlock, timm_cspnet.EdgeBlock):
    """timm cspnet ``EdgeBlock`` with SE in ``attn``: 3x3, SE, 1x1 (+ shortcut)."""

    forward = timm_cspnet.EdgeBlock.forward
    se_slot = "attn"


def _mid_channels(block: nn.Module, position: str) -> int:
    # the slot sits after the block's middle conv (conv2 in the bottleneck, conv1 in the two-conv blocks)
    return (block.conv2 if isinstance(block, timm_cspnet.BottleneckBlock) else block.conv1).conv.out_channels


def _block_act(block: nn.Module) -> type[nn.Module]:
    """The block's activation class, which timm's cspnet SE variants pass to their SE (``act_layer=act_layer``)."""
    return type(block.conv1.bn.act)


def _attn3_filled(block: nn.Module) -> bool:
    return not isinstance(block.attn3, nn.Identity)


for _block, _se_block, _builtin in (
    (timm_cspnet.BottleneckBlock, SETimmCspBottleneck, _attn3_filled),
    (timm_cspnet.DarkBlock, SETimmCspDarkBlock, None),
    (timm_cspnet.EdgeBlock, SETimmCspEdgeBlock, None),
):
    register_se_block(
        _block,
        _se_block,
        channels=_mid_channels,
        positions=("standard",),
        stage=stage_from_stages_index,
        description=f"timm cspnet {_block.__name__} (SE in its {_se_block.se_slot!r} slot, as timm's SE variants)",
        num_stages=CSPNET_STAGES,
        builtin_se=_builtin,
        act_layer=_block_act,
    )
