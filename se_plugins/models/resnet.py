"""``se_plugin_<arch>`` for every timm ResNet-family architecture without attention of its own.

Registered from a module named ``resnet`` like timm's, so ``timm.list_models(module="resnet")`` lists the SE twins
beside ``seresnet*``. Each entrypoint builds the base through its own timm entrypoint (so ``num_classes``,
``in_chans``, ``features_only``, ``out_indices``, ``output_stride``, ``drop_path_rate`` ... behave exactly as for the
base) and inserts SE with :func:`se_plugins.add_se`. Pretrained cfgs are the base's, so ``pretrained=True`` loads the
base weights through timm's own mechanism (hub, url or ``pretrained_cfg_overlay=dict(file=...)``): SE is inserted
before the weights load, every base key loads strictly, and SE keys missing from the checkpoint keep their
(identity) initialisation. A checkpoint that already has SE weights (timm ``seresnet*``, a fine-tuned
``se_plugin_*``) loads them too.
"""

from __future__ import annotations

from timm.models import list_models
from timm.models import resnet as timm_resnet

from ._factory import PREFIX, register_se_twins

# ResNet-family models in timm's resnet module that already carry their own attention (or are test models).
_HAS_ATTENTION = ("eca", "seresnet", "seresnext", "senet", "resnetrs", "test_")


def base_architectures() -> list[str]:
    """The timm ResNet-family architectures that get an ``se_plugin_`` twin (our own twins excluded)."""
    return [
        name
        for name in list_models(module="resnet")
        if not name.startswith(_HAS_ATTENTION) and not name.startswith(PREFIX)
    ]


MODELS = register_se_twins(__name__, timm_resnet, base_architectures())
