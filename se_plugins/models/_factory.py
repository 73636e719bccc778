"""Shared machinery of the ``se_plugin_<arch>`` registrations: build the base through its timm entrypoint, add SE.

Each family module (``resnet.py``, ...) is named like the timm module of its base architectures, so timm's module
filters (``timm.list_models(module="resnet")``, the model tests' module-based selection) see the SE twins beside the
family's own models. A family module calls :func:`register_se_twins` once.

SE options are keyword arguments of ``timm.create_model``: ``se_reduction`` (or ``reduction``), ``se_stages``
(``stages``), ``se_position`` (``position``), ``se_init`` (``init``), ``se_fused`` (``fused``).
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import torch
from timm.models import generate_default_cfgs, get_arch_pretrained_cfgs, register_model
from torch import nn

from ..insert import add_se, has_se, iter_se_blocks, se_modules
from ._features import SEFeatureGraphNet, inserting_before_features, wants_fx_features

PREFIX = "se_plugin_"
_SE_KWARGS = {
    "se_reduction": "reduction",
    "se_stages": "stages",
    "se_position": "position",
    "se_init": "init",
    "se_fused": "fused",
}


def pop_se_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the SE options from timm keyword arguments and return them as ``add_se`` keywords."""
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


def create_se_plugin(base_entrypoint: Callable[..., nn.Module], pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build the SE twin of ``base_entrypoint`` (a timm entrypoint; kwargs: timm's, plus the SE options)."""
    insert = functools.partial(add_se, **pop_se_kwargs(kwargs))
    filter_fn = functools.partial(_insert_se_and_complete, insert=insert)
    if wants_fx_features(kwargs):
        kwargs["feature_cls"] = SEFeatureGraphNet
    with inserting_before_features(insert):
        model = base_entrypoint(pretrained=pretrained, pretrained_filter_fn=filter_fn, **kwargs)
    # features_only with out_indices=(0,) keeps only the stem: no block is left to get SE
    if not has_se(model) and next(iter_se_blocks(model), None) is not None:
        insert(model)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        model.pretrained_cfg = model.default_cfg = {**cfg, "architecture": PREFIX + base_entrypoint.__name__}
    return model


def _make_entrypoint(base_entrypoint: Callable[..., nn.Module], module_name: str) -> Callable[..., nn.Module]:
    base = base_entrypoint.__name__

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_se_plugin(base_entrypoint, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = PREFIX + base
    entrypoint.__module__ = module_name
    entrypoint.__doc__ = f"timm ``{base}`` with Squeeze-and-Excitation (loads ``{base}`` pretrained weights)."
    return entrypoint


def _twin_cfgs(base: str) -> dict[str, Any]:
    cfgs = {}
    for name, cfg in get_arch_pretrained_cfgs(base).items():  # keys are "<base>.<tag>" (or "<base>")
        _, _, tag = name.partition(".")
        cfgs[f"{PREFIX}{base}.{tag}" if tag else PREFIX + base] = cfg.to_dict()
    return cfgs


def _with_globals(function: types.FunctionType, **names: Any) -> types.FunctionType:
    """``function`` running with some of its module's global names bound to other objects (its code unchanged)."""
    namespace = {**function.__globals__, **names}
    return types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )


def timm_filter_first(
    timm_module: ModuleType, create: str, timm_filter: str = "checkpoint_filter_fn"
) -> Callable[[str], Callable[..., nn.Module]]:
    """``base_entrypoint`` for :func:`register_se_twins` where timm's builder fixes its own ``pretrained_filter_fn``.

    ``timm_module.<create>`` (e.g. ``_create_convnext``) passes ``pretrained_filter_fn=<timm_filter>`` to
    ``build_model_with_cfg``, so the entrypoints take no filter of ours. The returned entrypoint runs timm's own
    entrypoint (its code, its model arguments) with ``<create>`` seeing a filter that applies timm's first (it
    remaps original checkpoints), then ours (SE inserted, SE keys completed): the load stays strict.
    """

    def base_entrypoint(variant: str) -> Callable[..., nn.Module]:
        timm_entrypoint = getattr(timm_module, variant)

        def entrypoint(pretrained: bool = False, pretrained_filter_fn: Callable | None = None, **kwargs: Any):
            def filter_fn(state_dict: dict, model: nn.Module) -> dict:
                state_dict = getattr(timm_module, timm_filter)(state_dict, model)
                return pretrained_filter_fn(state_dict, model) if pretrained_filter_fn is not None else state_dict

            create_fn = _with_globals(getattr(timm_module, create), **{timm_filter: filter_fn})
            return _with_globals(timm_entrypoint, **{create: create_fn})(pretrained=pretrained, **kwargs)

        entrypoint.__name__ = variant
        return entrypoint

    return base_entrypoint


def register_se_twins(
    module: ModuleType | str,
    timm_module: ModuleType,
    bases: Iterable[str],
    base_entrypoint: Callable[[str], Callable[..., nn.Module]] | None = None,
) -> list[str]:
    """Register ``se_plugin_<base>`` for every base (an entrypoint of ``timm_module``) from the family ``module``.

    Sets ``module.default_cfgs`` (the bases' pretrained cfgs under the twins' names, read by timm's
    ``register_model``) and defines each entrypoint as an attribute of ``module``. Returns the registered names.
    ``base_entrypoint(name)`` replaces ``getattr(timm_module, name)`` for families whose timm entrypoints fix a
    ``pretrained_filter_fn`` of their own (the replacement takes ours and composes the two).
    """
    module = sys.modules[module] if isinstance(module, str) else module
    bases = list(bases)
    module.default_cfgs = generate_default_cfgs({k: v for base in bases for k, v in _twin_cfgs(base).items()})
    names = []
    for base in bases:
        base_fn = base_entrypoint(base) if base_entrypoint is not None else getattr(timm_module, base)
        entrypoint = register_model(_make_entrypoint(base_fn, module.__name__))
        setattr(module, entrypoint.__name__, entrypoint)
        names.append(entrypoint.__name__)
    return names
