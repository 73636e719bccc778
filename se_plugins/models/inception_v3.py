"""``se_plugin_<arch>`` for timm's Inception-v3 architectures.

Registered from a module named ``inception_v3`` like timm's, so ``timm.list_models(module="inception_v3")`` lists
the twins beside the base. SE on each Inception module's output (the SE paper's SE-Inception, Fig. 2; see
:mod:`se_plugins.insert.timm_inception_v3`). No architecture of the module has channel attention of its own, so each
gets a twin; ``pretrained=True`` loads the base's weights through timm's mechanism with SE identity-initialised.
"""

from __future__ import annotations

import importlib

from timm.models import list_models, register_model_deprecations

from ._factory import PREFIX, register_se_twins

# not ``from timm.models import inception_v3``: that name is also an entrypoint function
timm_inception_v3 = importlib.import_module("timm.models.inception_v3")


def base_architectures() -> list[str]:
    """The timm Inception-v3 architectures that get an ``se_plugin_`` twin."""
    return list_models(module="inception_v3", exclude_filters=["se_plugin_*"])


MODELS = register_se_twins(__name__, timm_inception_v3, base_architectures())
# timm's deprecated names of this family, as twins: ``se_plugin_<old name>`` builds ``se_plugin_<its current name>``
DEPRECATED = {
    "tf_inception_v3": "inception_v3.tf_in1k",
    "adv_inception_v3": "inception_v3.tf_adv_in1k",
    "gluon_inception_v3": "inception_v3.gluon_in1k",
}
register_model_deprecations(__name__, {PREFIX + old: PREFIX + new for old, new in DEPRECATED.items()})
