"""SE adapter for smp's own Xception encoder (``smp.Unet("xception")``): its ``Block`` is the original Keras-port
Xception block, as timm's ``legacy_xception`` has it, so SE sits where :mod:`.timm_xception` puts it -- on ``rep``'s
output, before the add -- with every position of the paper's integration study and the same stages (1 = entry flow
``block1..3``, 2 = middle flow ``block4..11``, 3 = exit flow ``block12``).
"""

from segmentation_models_pytorch.encoders import _xception as smp_xception

from .block import SEResidualBlock
from .registry import register_se_block
from .timm_xception import LegacyBlockResidual, legacy_channels, legacy_stage


class SESmpXceptionBlock(LegacyBlockResidual, SEResidualBlock, smp_xception.Block):
    """smp Xception ``Block`` with SE on ``rep``'s output, before the add."""


register_se_block(
    smp_xception.Block,
    SESmpXceptionBlock,
    channels=legacy_channels,
    stage=legacy_stage,
    num_stages=3,
    description="smp Xception Block",
)
