"""``add_se``: insert Squeeze-and-Excitation into every supported block of an existing model, in place."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

from torch import nn

from ..layers import SE_INITS, SEInit, SqueezeExcite
from .block import SE_POSITIONS, SEResidualBlock
from .registry import SEAdapter, adapter_for, site_adapters, supported_blocks

SEPosition = Literal["standard", "pre", "post", "identity"]


def iter_se_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module, SEAdapter]]:
    """Yield ``(qualified name, block, adapter)`` for every block of ``model`` that can get (or has) SE."""
    sites = site_adapters(model)
    for name, module in model.named_modules():
        adapter = sites.get(id(module)) or adapter_for(module)
        if adapter is not None:
            yield name, module, adapter


def iter_residual_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module, int]]:
    """Yield ``(qualified name, block, stage)`` for every supported block; the stage (1-based) from its name.

    Raises:
        ValueError: a block whose family has no stages in its names (torchvision's flat MobileNetV2).
    """
    for name, block, adapter in iter_se_blocks(model):
        stage = adapter.stage(name)
        if stage is None:
            raise ValueError(f"add_se: cannot tell the stage of block {name!r} ({adapter.description})")
        yield name, block, stage


def _block_has_se(block: nn.Module, adapter: SEAdapter) -> bool:
    # timm's efficientnet-builder and RegNet blocks keep an empty SE slot (``se = nn.Identity()``) without SE;
    # cspnet/byobnet blocks name theirs otherwise (``attn``, ``attn2``: the adapter's ``slot``)
    se = getattr(block, adapter.slot, None)
    if isinstance(block, SEResidualBlock) or (se is not None and not isinstance(se, nn.Identity)):
        return True
    return adapter.builtin_se is not None and adapter.builtin_se(block)


def has_se(model: nn.Module) -> bool:
    """Whether any supported block of ``model`` already has an SE module."""
    return any(_block_has_se(block, adapter) for _, block, adapter in iter_se_blocks(model))


def _check_stages(stages: Iterable[int] | None, num_stages: int = 4) -> set[int] | None:
    if stages is None:
        return None
    chosen = set(stages)
    if not chosen or not all(isinstance(s, int) for s in chosen) or not chosen <= set(range(1, num_stages + 1)):
        raise ValueError(
            f"add_se: stages must be a non-empty subset of 1..{num_stages} (or None for all), got {stages!r}"
        )
    return chosen


def _num_stages(blocks: list[tuple[str, nn.Module, SEAdapter]]) -> int:
    """The model's stage count: its families' own, or (``num_stages=None``) the highest stage of their blocks."""
    counts = [
        adapter.num_stages if adapter.num_stages is not None else adapter.stage(name) for name, _, adapter in blocks
    ]
    return max((c for c in counts if c is not None), default=1)


def add_se(
    model: nn.Module,
    *,
    reduction: float = 16,
    stages: Iterable[int] | None = None,
    position: SEPosition | None = None,
    init: SEInit = "identity",
    fused: bool = True,
) -> nn.Module:
    """Insert SE into every supported residual block of ``model`` (in place) and return ``model``.

    Args:
        model: A model containing supported blocks (a classifier, a features_only model, a Faster R-CNN, an smp
            encoder or a whole smp model); see :func:`se_plugins.register_se_block` for your own blocks.
        reduction: SE reduction ratio r (hidden width ``make_divisible(C / r, 8)`` as in timm).
        stages: Which stages get SE (ResNets: 1..4, timm MobileNetV2: 1..7, MobileNetV1: 1..5); ``None`` = all.
        position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"`` (the paper's ablation);
            ``None`` (default): each family's own (``"standard"`` for residual blocks, ``"post"`` -- the
            module's output -- for families without a residual add).
        init: ``"identity"``: the model computes exactly the same function as before (pretrained weights stay
            valid); ``"random"``: the paper's initialisation.
        fused: Fold the channel scale into the residual add (same results, less memory traffic).

    Returns:
        ``model``, with new parameters under ``<block>.se.`` and every existing state-dict key unchanged.

    Raises:
        ValueError: bad options, a model without supported blocks, or a model that already has SE.

    Example:
        >>> import timm
        >>> model = add_se(timm.create_model("resnet18"), reduction=16)
        >>> "layer1.0.se.fc1.weight" in model.state_dict()
        True
    """
    if position is not None and position not in SE_POSITIONS:
        raise ValueError(f"add_se: position must be one of {SE_POSITIONS}, got {position!r}")
    if init not in SE_INITS:
        raise ValueError(f"add_se: init must be one of {SE_INITS}, got {init!r}")
    if not reduction > 0:
        raise ValueError(f"add_se: reduction must be > 0, got {reduction!r}")
    blocks = list(iter_se_blocks(model))
    if not blocks:
        raise ValueError(
            f"add_se: {type(model).__name__} has no supported residual block; supported: {supported_blocks()}"
        )
    chosen = _check_stages(stages, _num_stages(blocks))
    for name, block, adapter in blocks:
        if _block_has_se(block, adapter):
            raise ValueError(f"add_se: {type(model).__name__} already has SE (block {name!r}); add it only once")
        if position is not None and position not in adapter.positions:
            raise ValueError(
                f"add_se: position {position!r} is not supported by {adapter.description} (block {name!r}); "
                f"supported: {adapter.positions}"
            )
        if chosen is not None and adapter.stage(name) is None:
            raise ValueError(
                f"add_se: cannot tell the stage of block {name!r} ({adapter.description}); use stages=None"
            )
    present = {adapter.stage(name) for name, _, adapter in blocks}
    if chosen is not None and not chosen & present:
        raise ValueError(
            f"add_se: stages {sorted(chosen)} select no block of {type(model).__name__} (its stages: {sorted(present)})"
        )
    for name, block, adapter in blocks:
        if chosen is not None and adapter.stage(name) not in chosen:
            continue
        ref = next(block.parameters(), None)
        if ref is None:  # a parameterless site (VGG's ReLU): SE goes where the model's weights are
            ref = next(model.parameters())
        hidden = adapter.hidden(block, reduction) if adapter.hidden is not None else None
        options = {"device": ref.device, "dtype": ref.dtype}
        block_position = adapter.positions[0] if position is None else position
        if adapter.act_layer is not None:
            options["act_layer"] = adapter.act_layer(block)
        se = SqueezeExcite(
            adapter.channels(block, block_position), reduction, hidden_channels=hidden, init=init, **options
        )
        block.__class__ = adapter.se_class
        setattr(block, adapter.slot, se)  # ``se``, or the block's own attention slot
        block.se_position = block_position
        block.se_fused = fused
    return model


def set_se_fused(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every SE block of ``model`` between the fused and the plain implementation (same results)."""
    for module in model.modules():
        if isinstance(module, SEResidualBlock):
            module.se_fused = fused
    return model


def se_modules(model: nn.Module) -> dict[str, SqueezeExcite]:
    """The SE modules of ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SqueezeExcite)}
