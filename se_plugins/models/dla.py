"""``se_plugin_<arch>`` for timm's DLA architectures (DLA, DLA-X, DLA-Res2Net/Res2NeXt), SE before each block's add.

Registered from a module named ``dla`` like timm's. SE sits on each tree block's branch after its last BN, before
the residual add (see :mod:`se_plugins.insert.timm_dla`); the trees' aggregation roots are left alone. timm loads
DLA checkpoints non-strictly (``pretrained_strict=False``, for old checkpoints with unused projection layers); every
key of a base checkpoint still lands in the twin unchanged and the SE keys keep their identity initialisation. No
DLA in timm has attention of its own, so every arch gets a twin.
"""

from __future__ import annotations

from timm.models import dla as timm_dla
from timm.models import list_models

from ._factory import PREFIX, register_se_twins


def base_architectures() -> list[str]:
    """The timm DLA architectures that get an ``se_plugin_`` twin (our own twins excluded)."""
    return [name for name in list_models(module="dla") if not name.startswith(PREFIX)]


MODELS = register_se_twins(__name__, timm_dla, base_architectures())
