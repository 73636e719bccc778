"""``se_plugin_<arch>`` for timm's HRNet architectures, SE in every residual block of every branch.

Registered from a module named ``hrnet`` like timm's. HRNet's branches (and its head's ``incre_modules``) are timm
ResNet ``BasicBlock``/``Bottleneck`` blocks: SE sits in them as in SE-ResNet, after the last BN, before the add (see
:mod:`se_plugins.insert.timm_resnet`); the fuse layers between branches, the transitions and the stem stay as they
are. Stages: ``layer1`` and ``stage2`` .. ``stage4`` are 1 .. 4 (the head counts as 4). ``features_only`` builds
timm's own ``HighResolutionNetFeatures`` (or a generic feature wrapper for ``feature_cls=...``), which gets SE the
same way. No HRNet in timm has attention of its own, so every arch gets a twin.
"""

from __future__ import annotations

from timm.models import hrnet as timm_hrnet
from timm.models import list_models

from ._factory import PREFIX, register_se_twins


def base_architectures() -> list[str]:
    """The timm HRNet architectures that get an ``se_plugin_`` twin (our own twins excluded)."""
    return [name for name in list_models(module="hrnet") if not name.startswith(PREFIX)]


MODELS = register_se_twins(__name__, timm_hrnet, base_architectures())
