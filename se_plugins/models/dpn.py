"""``se_plugin_<arch>`` for timm's Dual Path Networks, SE on each block's residual-path branch before the add.

Registered from a module named ``dpn`` like timm's. SE scales the branch channels added to the residual path; the
dense path's channels stay unscaled (see :mod:`se_plugins.insert.timm_dpn`). Pretrained weights are the base's,
loaded through timm's mechanism with SE identity-initialised. No DPN in timm has attention of its own, so every
arch gets a twin.
"""

from __future__ import annotations

from timm.models import dpn as timm_dpn
from timm.models import list_models

from ._factory import PREFIX, register_se_twins


def base_architectures() -> list[str]:
    """The timm DPN architectures that get an ``se_plugin_`` twin (our own twins excluded)."""
    return [name for name in list_models(module="dpn") if not name.startswith(PREFIX)]


MODELS = register_se_twins(__name__, timm_dpn, base_architectures())
