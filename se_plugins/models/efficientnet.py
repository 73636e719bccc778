"""``se_plugin_<arch>`` for the nets of timm's efficientnet builder that are built without SE.

MobileNetV1 and V2, MNASNet-B1 (``mnasnet_*``), FBNet-C, SPNASNet, EfficientNet-Lite (``efficientnet_lite*``,
``tf_efficientnet_lite*``) and EfficientNet-EdgeTPU (``efficientnet_es/em/el*``, ``mobilenet_edgetpu_*``): timm's
``efficientnet`` module builds all of them (MobileNetV1 too), so the twins are registered from a module of that name
and ``timm.list_models(module="efficientnet")`` lists them beside their bases. SE fills each block's own SE slot
(after the depthwise conv, or the 3x3 expansion conv of ``EdgeResidual``, as in MobileNetV3/MnasNet-A1/EfficientNet;
see :mod:`se_plugins.insert.timm_mobilenet`). Pretrained weights are the base's, loaded through timm's mechanism with
SE identity-initialised.

Not registered: the nets with attention of their own somewhere (EfficientNet, MnasNet-A1 ``semnasnet_*``,
``mnasnet_small``, TinyNet, FBNetV3, MixNet, ..., all with SE in some or all blocks) and the ``*test*`` archs.
"""

from __future__ import annotations

from timm.models import efficientnet as timm_efficientnet

from ._factory import register_se_twins

# a fixed list (importing must not build models); tests/test_efficientnet_builder.py checks it against timm's
# models: every base has only empty SE slots, and every such arch of these families is here
BASES = (
    "efficientnet_el",
    "efficientnet_el_pruned",
    "efficientnet_em",
    "efficientnet_es",
    "efficientnet_es_pruned",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite3",
    "efficientnet_lite4",
    "fbnetc_100",
    "mnasnet_050",
    "mnasnet_075",
    "mnasnet_100",
    "mnasnet_140",
    "mobilenet_edgetpu_100",
    "mobilenet_edgetpu_v2_l",
    "mobilenet_edgetpu_v2_m",
    "mobilenet_edgetpu_v2_s",
    "mobilenet_edgetpu_v2_xs",
    "mobilenetv1_100",
    "mobilenetv1_100h",
    "mobilenetv1_125",
    "mobilenetv2_035",
    "mobilenetv2_050",
    "mobilenetv2_075",
    "mobilenetv2_100",
    "mobilenetv2_110d",
    "mobilenetv2_120d",
    "mobilenetv2_140",
    "spnasnet_100",
    "tf_efficientnet_el",
    "tf_efficientnet_em",
    "tf_efficientnet_es",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "tf_efficientnet_lite3",
    "tf_efficientnet_lite4",
)


def base_architectures() -> list[str]:
    """The timm efficientnet-builder architectures without SE (every block's ``se`` slot empty)."""
    return list(BASES)


MODELS = register_se_twins(__name__, timm_efficientnet, base_architectures())
