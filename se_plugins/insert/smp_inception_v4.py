"""SE adapter for smp's own Inception-v4 encoder (``smp.Unet("inceptionv4")``): its modules are timm's Inception-v4
modules under their original names (``Mixed_3a`` .. ``Inception_C``), so SE sits where :mod:`.timm_inception_v4`
puts it -- on every module's output (the paper's SE-Inception module, position ``"post"`` only) -- with the same
widths and stages (1 = stem, 2 = ``Inception_A``, 3 = ``Reduction_A`` + ``Inception_B``, 4 = ``Reduction_B`` +
``Inception_C``).
"""

from segmentation_models_pytorch.encoders import _inceptionv4 as smp_iv4

from .output_block import OUTPUT_POSITIONS, SEOutputBlock
from .registry import register_se_block
from .timm_inception_v4 import MODULES


class SESmpMixed3a(SEOutputBlock, smp_iv4.Mixed_3a):
    """smp Inception-v4 stem ``Mixed_3a`` with SE on its output."""


class SESmpMixed4a(SEOutputBlock, smp_iv4.Mixed_4a):
    """smp Inception-v4 stem ``Mixed_4a`` with SE on its output."""


class SESmpMixed5a(SEOutputBlock, smp_iv4.Mixed_5a):
    """smp Inception-v4 stem ``Mixed_5a`` with SE on its output."""


class SESmpInceptionA(SEOutputBlock, smp_iv4.Inception_A):
    """smp Inception-v4 ``Inception_A`` with SE on its output."""


class SESmpReductionA(SEOutputBlock, smp_iv4.Reduction_A):
    """smp Inception-v4 ``Reduction_A`` with SE on its output."""


class SESmpInceptionB(SEOutputBlock, smp_iv4.Inception_B):
    """smp Inception-v4 ``Inception_B`` with SE on its output."""


class SESmpReductionB(SEOutputBlock, smp_iv4.Reduction_B):
    """smp Inception-v4 ``Reduction_B`` with SE on its output."""


class SESmpInceptionC(SEOutputBlock, smp_iv4.Inception_C):
    """smp Inception-v4 ``Inception_C`` with SE on its output."""


# smp's class -> its SE class and its timm name (the key of MODULES: stage and output width)
_SE_CLASSES = {
    smp_iv4.Mixed_3a: (SESmpMixed3a, "Mixed3a"), smp_iv4.Mixed_4a: (SESmpMixed4a, "Mixed4a"),
    smp_iv4.Mixed_5a: (SESmpMixed5a, "Mixed5a"), smp_iv4.Inception_A: (SESmpInceptionA, "InceptionA"),
    smp_iv4.Reduction_A: (SESmpReductionA, "ReductionA"), smp_iv4.Inception_B: (SESmpInceptionB, "InceptionB"),
    smp_iv4.Reduction_B: (SESmpReductionB, "ReductionB"), smp_iv4.Inception_C: (SESmpInceptionC, "InceptionC"),
}  # fmt: skip

for _block, (_se_block, _timm_name) in _SE_CLASSES.items():
    _stage, _width = MODULES[_timm_name]
    register_se_block(
        _block,
        _se_block,
        channels=lambda block, position, width=_width: width(block),
        positions=OUTPUT_POSITIONS,
        stage=lambda name, stage=_stage: stage,
        num_stages=4,
        description=f"smp Inception-v4 {_block.__name__} (SE on the module output)",
    )
