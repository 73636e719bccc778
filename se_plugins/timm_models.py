"""``se_plugin_<arch>``: an SE twin, registered with timm, of every timm ResNet-family architecture without attention.

Each entrypoint builds the base architecture through its own timm entrypoint (so ``num_classes``, ``in_chans``,
``features_only``, ``out_indices``, ``output_stride``, ``drop_path_rate`` ... behave exactly as for the base) and
inserts SE with :func:`se_plugins.add_se`. Pretrained cfgs are the base architecture's, so ``pretrained=True`` loads
the base weights through timm's own mechanism (hub, url or ``pretrained_cfg_overlay=dict(file=...)``): SE is inserted
before the weights load, every base key loads strictly, and SE keys missing from the checkpoint keep their
(identity) initialisation. A checkpoint that already has SE weights (timm ``seresnet*``, a fine-tuned
``se_plugin_*``) loads them too.

SE options are keyword arguments of ``timm.create_model``: ``se_reduction`` (or ``reduction``), ``se_stages``
(``stages``), ``se_position`` (``position``), ``se_init`` (``init``), ``se_fused`` (``fused``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch
from timm.models import generate_default_cfgs, get_arch_pretrained_cfgs, list_models, register_model
from timm.models import resnet as timm_resnet
from torch import nn

from .insert import add_se, has_se, iter_residual_blocks, se_modules

PREFIX = "se_plugin_"
# ResNet-family models in timm's resnet module that already carry their own attention (or are test models).
_HAS_ATTENTION = ("eca", "seresnet", "seresnext", "senet", "resnetrs", "test_")
_SE_KWARGS = {
    "se_reduction": "reduction",
    "se_stages": "stages",
    "se_position": "position",
    "se_init": "init",
    "se_fused": "fused",
}


def base_architectures() -> list[str]:
    """The timm ResNet-family architectures that get an ``se_plugin_`` twin."""
    return [
        name
        for name in list_models(module="resnet")
        if not name.startswith(_HAS_ATTENTION) and not name.startswith(PREFIX)
    ]


def _pop_se_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    se_kwargs = {}
    for long_name, short_name in _SE_KWARGS.items():
        for key in (long_name, short_name):
            if key in kwargs:
                if short_name in se_kwargs:
                    raise TypeError(f"SE option given twice: {long_name!r} and {short_name!r}")
                se_kwargs[short_name] = kwargs.pop(key)
    return se_kwargs


def complete_se_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Add the model's current SE tensors for every SE module the checkpoint has no weights for (in place)."""
    model_state = model.state_dict()
    for name in se_modules(model):
        prefix = f"{name}."
        if prefix + "fc1.weight" not in state_dict:
            state_dict.update({k: v for k, v in model_state.items() if k.startswith(prefix)})
    return state_dict


def _insert_se_and_complete(state_dict: dict[str, torch.Tensor], model: nn.Module, insert: Callable) -> dict:
    """timm ``pretrained_filter_fn``: insert SE before the weights load, so the load is strict for every key."""
    if not has_se(model):
        insert(model)
    return complete_se_state_dict(state_dict, model)


def create_se_plugin(base: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build ``se_plugin_<base>``: the timm model ``base`` with SE (kwargs: timm's, plus the SE options)."""
    insert = functools.partial(add_se, **_pop_se_kwargs(kwargs))
    base_entrypoint = getattr(timm_resnet, base)
    filter_fn = functools.partial(_insert_se_and_complete, insert=insert)
    model = base_entrypoint(pretrained=pretrained, pretrained_filter_fn=filter_fn, **kwargs)
    # features_only with out_indices=(0,) keeps only the stem: no residual block is left to get SE
    if not has_se(model) and next(iter_residual_blocks(model), None) is not None:
        insert(model)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        model.pretrained_cfg = model.default_cfg = {**cfg, "architecture": PREFIX + base}
    return model


def _make_entrypoint(base: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_se_plugin(base, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = PREFIX + base
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm ``{base}`` with Squeeze-and-Excitation (loads ``{base}`` pretrained weights)."
    return entrypoint


def _default_cfgs(base: str) -> dict[str, Any]:
    cfgs = {}
    for name, cfg in get_arch_pretrained_cfgs(base).items():  # keys are "<base>.<tag>" (or "<base>")
        _, _, tag = name.partition(".")
        cfgs[f"{PREFIX}{base}.{tag}" if tag else PREFIX + base] = cfg.to_dict()
    return cfgs


_BASES = base_architectures()
default_cfgs = generate_default_cfgs({k: v for base in _BASES for k, v in _default_cfgs(base).items()})
for _base in _BASES:
    setattr(sys.modules[__name__], PREFIX + _base, register_model(_make_entrypoint(_base)))
