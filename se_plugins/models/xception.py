"""``se_plugin_<arch>`` for timm's legacy Xception architectures.

Registered from a module named ``xception`` like timm's, so ``timm.list_models(module="xception")`` lists the twins
beside the base. SE on each block's branch, before the add (see :mod:`se_plugins.insert.timm_xception`). No
architecture of the module has channel attention of its own, so each gets a twin; ``pretrained=True`` loads the
base's weights through timm's mechanism with SE identity-initialised.
"""

from __future__ import annotations

import importlib

from timm.models import list_models, register_model_deprecations

from ._factory import PREFIX, register_se_twins

# not ``from timm.models import xception``: that name is also an entrypoint function
timm_xception = importlib.import_module("timm.models.xception")


def base_architectures() -> list[str]:
    """The timm legacy Xception architectures that get an ``se_plugin_`` twin."""
    return list_models(module="xception", exclude_filters=["se_plugin_*"])


MODELS = register_se_twins(__name__, timm_xception, base_architectures())
# timm's deprecated names of this family, as twins: ``se_plugin_<old name>`` builds ``se_plugin_<its current name>``
DEPRECATED = {
    "xception": "legacy_xception",
}
register_model_deprecations(__name__, {PREFIX + old: PREFIX + new for old, new in DEPRECATED.items()})
