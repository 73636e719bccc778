"""``se_plugin_<arch>`` for timm's Inception-v4 architectures.

Registered from a module named ``inception_v4`` like timm's, so ``timm.list_models(module="inception_v4")`` lists
the twins beside the base. SE on each Inception and Reduction module's output (see
:mod:`se_plugins.insert.timm_inception_v4`). No architecture of the module has channel attention of its own, so each
gets a twin; ``pretrained=True`` loads the base's weights through timm's mechanism with SE identity-initialised.
"""

from __future__ import annotations

import importlib

from timm.models import list_models

from ._factory import register_se_twins

# not ``from timm.models import inception_v4``: that name is also an entrypoint function
timm_inception_v4 = importlib.import_module("timm.models.inception_v4")


def base_architectures() -> list[str]:
    """The timm Inception-v4 architectures that get an ``se_plugin_`` twin."""
    return list_models(module="inception_v4", exclude_filters=["se_plugin_*"])


MODELS = register_se_twins(__name__, timm_inception_v4, base_architectures())
