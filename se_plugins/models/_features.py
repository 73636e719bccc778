"""timm's feature extractors for SE twins that need SE in the model before timm wraps it.

timm wraps a ``features_only`` model after building it (and after loading pretrained weights, where SE is already
inserted). The list, dict, hook and getter wrappers keep the model's block modules, so SE can be added afterwards;
``feature_cls="fx"`` traces the model's forward into a graph at wrap time, so SE must be there before. So must it for
families whose SE sites only the model can tell (VGG): the flattening list wrapper drops the VGG container.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

from timm.models import FeatureDictNet, FeatureGraphNet, FeatureListNet
from torch import nn

from ..insert import has_se, iter_se_blocks

_PENDING_INSERT: contextvars.ContextVar[Callable[[nn.Module], nn.Module] | None] = contextvars.ContextVar(
    "se_plugins_pending_insert", default=None
)


@contextlib.contextmanager
def inserting_before_features(insert: Callable[[nn.Module], nn.Module]) -> Iterator[None]:
    """While building one model: :class:`SEFeatureGraphNet` inserts SE with ``insert`` before it traces."""
    token = _PENDING_INSERT.set(insert)
    try:
        yield
    finally:
        _PENDING_INSERT.reset(token)


def wants_fx_features(kwargs: dict) -> bool:
    """Whether timm keyword arguments ask for the FX feature extractor."""
    feature_cls = kwargs.get("feature_cls")
    if not kwargs.get("features_only"):
        return False
    if isinstance(feature_cls, str):
        return feature_cls.lower() == "fx"
    return isinstance(feature_cls, type) and issubclass(feature_cls, FeatureGraphNet)


def _insert_pending(model: nn.Module) -> None:
    insert = _PENDING_INSERT.get()
    if insert is not None and not has_se(model) and next(iter_se_blocks(model), None) is not None:
        insert(model)


class SEFeatureGraphNet(FeatureGraphNet):
    """``timm.models.FeatureGraphNet`` that inserts the pending SE into ``model`` before tracing it."""

    def __init__(self, model: nn.Module, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        _insert_pending(model)
        super().__init__(model, *args, **kwargs)


class SEFeatureListNet(FeatureListNet):
    """``timm.models.FeatureListNet`` that inserts the pending SE into ``model`` before flattening it."""

    def __init__(self, model: nn.Module, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        _insert_pending(model)
        super().__init__(model, *args, **kwargs)


class SEFeatureDictNet(FeatureDictNet):
    """``timm.models.FeatureDictNet`` that inserts the pending SE into ``model`` before flattening it."""

    def __init__(self, model: nn.Module, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        _insert_pending(model)
        super().__init__(model, *args, **kwargs)
