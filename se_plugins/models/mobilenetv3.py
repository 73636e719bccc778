"""``se_plugin_<arch>`` for the nets of timm's ``mobilenetv3`` module built without SE: MobileNetV3-Minimal and
MobileNetV4-Conv.

``tf_mobilenetv3_{large,small}_minimal_100`` are MobileNetV3 without SE (and without hard-swish and 5x5 kernels);
``mobilenetv4_conv_*`` are built from ``UniversalInvertedResidual`` blocks (and one ``EdgeResidual``), all with an
empty SE slot. SE fills each block's own slot, on the expanded channels before the linear projection, where
MobileNetV3 has it (see :mod:`se_plugins.insert.timm_mobilenet`); the twins are registered from a module named like
timm's, so ``timm.list_models(module="mobilenetv3")`` lists them beside their bases. Pretrained weights are the
base's, loaded through timm's mechanism with SE identity-initialised.

Not registered: MobileNetV3 (SE in its blocks), LCNet and FBNetV3 (SE in some blocks), and MobileNetV4-Hybrid
(multi-query attention blocks).
"""

from __future__ import annotations

from timm.models import mobilenetv3 as timm_mobilenetv3

from ._factory import register_se_twins

# a fixed list (importing must not build models); tests/test_mobilenetv4.py checks it against timm's models
BASES = (
    "mobilenetv4_conv_aa_large",
    "mobilenetv4_conv_aa_medium",
    "mobilenetv4_conv_blur_medium",
    "mobilenetv4_conv_large",
    "mobilenetv4_conv_medium",
    "mobilenetv4_conv_small",
    "mobilenetv4_conv_small_035",
    "mobilenetv4_conv_small_050",
    "tf_mobilenetv3_large_minimal_100",
    "tf_mobilenetv3_small_minimal_100",
)


def base_architectures() -> list[str]:
    """The timm mobilenetv3-module architectures without SE or attention (every block's ``se`` slot empty)."""
    return list(BASES)


MODELS = register_se_twins(__name__, timm_mobilenetv3, base_architectures())
