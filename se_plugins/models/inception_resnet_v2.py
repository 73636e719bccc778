"""``se_plugin_<arch>`` for timm's Inception-ResNet-v2 architectures.

Registered from a module named ``inception_resnet_v2`` like timm's, so
``timm.list_models(module="inception_resnet_v2")`` lists the twins beside the base. SE on each residual module's
scaled branch, before the add (SE-Inception-ResNet-v2 built as SE-ResNet; see
:mod:`se_plugins.insert.timm_inception_resnet_v2`). No architecture of the module has channel attention of its own,
so each gets a twin; ``pretrained=True`` loads the base's weights through timm's mechanism with SE identity-
initialised.
"""

from __future__ import annotations

import importlib

from timm.models import list_models, register_model_deprecations

from ._factory import PREFIX, register_se_twins

# not ``from timm.models import inception_resnet_v2``: that name is also an entrypoint function
timm_inception_resnet_v2 = importlib.import_module("timm.models.inception_resnet_v2")


def base_architectures() -> list[str]:
    """The timm Inception-ResNet-v2 architectures that get an ``se_plugin_`` twin."""
    return list_models(module="inception_resnet_v2", exclude_filters=["se_plugin_*"])


MODELS = register_se_twins(__name__, timm_inception_resnet_v2, base_architectures())
# timm's deprecated names of this family, as twins: ``se_plugin_<old name>`` builds ``se_plugin_<its current name>``
DEPRECATED = {
    "ens_adv_inception_resnet_v2": "inception_resnet_v2.tf_ens_adv_in1k",
}
register_model_deprecations(__name__, {PREFIX + old: PREFIX + new for old, new in DEPRECATED.items()})
