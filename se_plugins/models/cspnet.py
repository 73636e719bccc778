"""``se_plugin_<arch>`` for timm's CSPNet / CSPDarkNet / DarkNet architectures without attention of their own.

Registered from a module named ``cspnet`` like timm's. The archs are read from timm's model cfgs: every arch whose
stages build no attention layer (``CspStagesCfg.attn_layer`` None for every stage) gets a twin; ``sedarknet21``,
``cs3sedarknet_*`` and ``cs3se_edgenet_x`` already have SE. SE fills each block's own attention slot, as in those
SE variants (see :mod:`se_plugins.insert.timm_cspnet`).
"""

from __future__ import annotations

from timm.models import cspnet as timm_cspnet
from timm.models import list_models

from ._factory import PREFIX, register_se_twins


def has_attention(arch: str) -> bool:
    """Whether timm's cfg of ``arch`` builds an attention layer (SE, ECA, ...) into any stage."""
    return any(layer for layer in timm_cspnet.model_cfgs[arch].stages.attn_layer)


def base_architectures() -> list[str]:
    """The timm cspnet architectures without attention that get an ``se_plugin_`` twin."""
    return [
        name
        for name in list_models(module="cspnet")
        if not name.startswith(PREFIX) and name in timm_cspnet.model_cfgs and not has_attention(name)
    ]


MODELS = register_se_twins(__name__, timm_cspnet, base_architectures())
