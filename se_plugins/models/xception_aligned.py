"""``se_plugin_<arch>`` for timm's aligned Xception architectures.

Registered from a module named ``xception_aligned`` like timm's, so ``timm.list_models(module="xception_aligned")``
lists the twins beside the base. SE on each module's separable-conv stack, before the add (see
:mod:`se_plugins.insert.timm_xception`). No architecture of the module has channel attention of its own, so each
gets a twin; ``pretrained=True`` loads the base's weights through timm's mechanism with SE identity-initialised.
"""

from __future__ import annotations

import importlib

from timm.models import list_models

from ._factory import register_se_twins

# not ``from timm.models import xception_aligned``: that name is also an entrypoint function
timm_xception_aligned = importlib.import_module("timm.models.xception_aligned")


def base_architectures() -> list[str]:
    """The timm aligned Xception architectures that get an ``se_plugin_`` twin."""
    return list_models(module="xception_aligned", exclude_filters=["se_plugin_*"])


MODELS = register_se_twins(__name__, timm_xception_aligned, base_architectures())
