"""``se_plugin_<arch>`` for timm's Res2Net / Res2NeXt architectures, with SE in each block's own slot.

Registered from a module named ``res2net`` like timm's, so ``timm.list_models(module="res2net")`` lists the twins
beside ``res2net*``. SE sits after ``bn3``, before the residual add, as in the Res2Net paper's SE-Res2Net (see
:mod:`se_plugins.insert.timm_res2net`). Pretrained weights are the base's, loaded through timm's mechanism with SE
identity-initialised. No Res2Net in timm has attention of its own, so every arch gets a twin.
"""

from __future__ import annotations

from timm.models import list_models
from timm.models import res2net as timm_res2net

from ._factory import PREFIX, register_se_twins


def base_architectures() -> list[str]:
    """The timm Res2Net / Res2NeXt architectures that get an ``se_plugin_`` twin (our own twins excluded)."""
    return [name for name in list_models(module="res2net") if not name.startswith(PREFIX)]


MODELS = register_se_twins(__name__, timm_res2net, base_architectures())
