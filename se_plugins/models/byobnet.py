"""``se_plugin_<arch>`` for timm's BYOB architectures without attention of their own (RepVGG, MobileOne S0-S3,
GENet, ResNet-*ts, ResNet-51q/61q, the CLIP ResNets with average pooling).

Registered from a module named ``byobnet`` like timm's. The archs are read from timm's model cfgs: a cfg has
attention when the model or any block sets an attention or self-attention layer, any block is a
``SelfAttnBlock``, or the head is an attention pool (CLIP's ``attn_*`` heads). SE fills each block's own attention
slot, as in timm's SE variants (see :mod:`se_plugins.insert.timm_byobnet`).
"""

from __future__ import annotations

from collections.abc import Iterator

from timm.models import byobnet as timm_byobnet
from timm.models import list_models

from ._factory import PREFIX, register_se_twins, timm_filter_first


def _block_cfgs(blocks: object) -> Iterator[timm_byobnet.ByoBlockCfg]:
    if isinstance(blocks, list | tuple):
        for block in blocks:
            yield from _block_cfgs(block)
    else:
        yield blocks


def has_attention(arch: str) -> bool:
    """Whether timm's cfg of ``arch`` builds attention: channel (SE, ECA, GC, ...) or self-attention, or a head."""
    cfg = timm_byobnet.model_cfgs[arch]
    for block in _block_cfgs(cfg.blocks):
        # a block's own setting overrides the model's ('' turns it off)
        attn = block.attn_layer if block.attn_layer is not None else cfg.attn_layer
        self_attn = block.self_attn_layer if block.self_attn_layer is not None else cfg.self_attn_layer
        if attn or self_attn or block.type == "self_attn":
            return True
    return "attn" in cfg.head_type


def base_architectures() -> list[str]:
    """The timm byobnet architectures without attention that get an ``se_plugin_`` twin (test models excluded)."""
    return [
        name
        for name in list_models(module="byobnet", exclude_filters=["test_*"])
        if not name.startswith(PREFIX) and not has_attention(name)
    ]


# timm's _create_byobnet fixes its own checkpoint filter (original checkpoints -> timm keys): ours runs after it
MODELS = register_se_twins(
    __name__, timm_byobnet, base_architectures(), base_entrypoint=timm_filter_first(timm_byobnet, "_create_byobnet")
)
