"""``se_plugin_<arch>`` for timm's ConvNeXt V1 and V2 architectures (none has channel attention of its own).

Registered from a module named ``convnext`` like timm's. SE sits at the end of each block's branch, after the layer
scale, before the add (see :mod:`se_plugins.insert.timm_convnext`). ConvNeXt V2's GRN (global response
normalisation) is a channel recalibration of its own inside the MLP, which its authors chose over SE; the V2 twins
add SE on top of it, for comparison.
"""

from __future__ import annotations

from timm.models import convnext as timm_convnext
from timm.models import list_models

from ._factory import PREFIX, register_se_twins, timm_filter_first


def base_architectures() -> list[str]:
    """The timm ConvNeXt V1/V2 architectures that get an ``se_plugin_`` twin (test models excluded)."""
    return [
        name
        for name in list_models(["convnext_*", "convnextv2_*"], exclude_filters=["test_*"])
        if not name.startswith(PREFIX)
    ]


# timm's _create_convnext fixes its own checkpoint filter (original checkpoints -> timm keys): ours runs after it
MODELS = register_se_twins(
    __name__, timm_convnext, base_architectures(), base_entrypoint=timm_filter_first(timm_convnext, "_create_convnext")
)
