"""Which block classes can get SE, and how: a small registry from block class to its SE adapter."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from .block import SE_POSITIONS, SEResidualBlock

_STAGE_RE = re.compile(r"(?:^|[._])layer(\d+)(?:[._]|$)")


def stage_from_layer_name(name: str) -> int | None:
    """Stage 1..4 of a ResNet-style block from its qualified name (``...layerN...``), or None."""
    match = _STAGE_RE.search(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class SEAdapter:
    """How one block class gets SE.

    Attributes:
        se_class: The class the block's class is switched to: a subclass of :class:`SEResidualBlock` and of the
            block class, defining ``residual`` and ``final_act``.
        channels: ``channels(block, position)`` -> the channel count SE sees at ``position``.
        positions: The positions this family supports; the first is its default (``add_se(position=None)``).
        stage: ``stage(qualified_name)`` -> the block's stage (1-based), or None when it cannot be told.
        description: A short name for error messages.
        num_stages: How many stages the family has (``add_se(stages=...)`` takes a subset of ``1..num_stages``);
            None: it differs per model, and the model's count is the highest stage its blocks have.
        hidden: ``hidden(block, reduction)`` -> SE's hidden width where the family's authors have their own rule
            (RegNetY: block input width / r); None: ``make_divisible(C / r, 8)`` of the SE channels ``C``.
        builtin_se: ``builtin_se(block)`` -> whether the block has SE of its own somewhere else than ``block.se``.
        act_layer: ``act_layer(block)`` -> the activation class between SE's two FC layers where the family's own SE
            variants use the block's (timm CSPNet); None: ReLU, the paper's.
    """

    se_class: type[nn.Module]
    channels: Callable[[nn.Module, str], int]
    positions: tuple[str, ...] = SE_POSITIONS
    stage: Callable[[str], int | None] = stage_from_layer_name
    description: str = ""
    num_stages: int | None = 4
    hidden: Callable[[nn.Module, float], int] | None = None
    builtin_se: Callable[[nn.Module], bool] | None = None
    act_layer: Callable[[nn.Module], type[nn.Module]] | None = None

    @property
    def slot(self) -> str:
        """The block attribute SE goes into: ``se``, or the SE class's ``se_slot`` (a block's own attention slot)."""
        return getattr(self.se_class, "se_slot", "se")


_ADAPTERS: dict[type[nn.Module], SEAdapter] = {}


def conv_channels(last_conv: str, first_conv: str = "conv1") -> Callable[[nn.Module, str], int]:
    """``channels(block, position)`` for a branch from conv ``first_conv`` to conv ``last_conv``.

    SE sees the block input (``first_conv``'s input channels) at ``"pre"`` and the branch output elsewhere.
    """

    def channels(block: nn.Module, position: str) -> int:
        return getattr(block, first_conv).in_channels if position == "pre" else getattr(block, last_conv).out_channels

    return channels


def register_se_block(
    block_class: type[nn.Module],
    se_class: type[nn.Module],
    *,
    channels: Callable[[nn.Module, str], int],
    positions: tuple[str, ...] = SE_POSITIONS,
    stage: Callable[[str], int | None] = stage_from_layer_name,
    description: str = "",
    num_stages: int | None = 4,
    hidden: Callable[[nn.Module, float], int] | None = None,
    builtin_se: Callable[[nn.Module], bool] | None = None,
    act_layer: Callable[[nn.Module], type[nn.Module]] | None = None,
) -> SEAdapter:
    """Make :func:`se_plugins.add_se` put SE into every ``block_class`` module (yours too).

    Args:
        block_class: The residual block class as the model builds it.
        se_class: ``class MySEBlock(SEResidualBlock, MyBlock)`` defining ``residual(x)`` (the branch up to its
            last norm) and ``final_act(x)`` (what follows the add); ``shortcut(x)`` defaults to ``downsample``.
        channels: ``channels(block, position)`` -> channels SE sees (for ``"pre"`` the block input's).
        positions: Which of ``standard``/``pre``/``post``/``identity`` the block supports (the first is its
            default). A module without a residual add subclasses :class:`SEOutputBlock` and takes ``("post",)``.
            A block with an attention slot of its own keeps its forward (``forward = MyBlock.forward``) and
            subclasses :class:`SESlotBlock` naming the slot (``se_slot = "attn"``): SE goes there.
        stage: Block name -> stage number (for ``add_se(stages=...)``); default: from ``layerN`` in the name.
        description: Short name used in error messages.
        num_stages: How many stages the family has (ResNets: 4); None: counted per model from its blocks' stages.
        hidden: ``hidden(block, reduction)`` -> SE's hidden width (default: ``make_divisible(C / r, 8)``).
        builtin_se: ``builtin_se(block)`` -> whether the block already has SE elsewhere than ``block.se``.
        act_layer: ``act_layer(block)`` -> the activation class inside SE (default: ReLU).

    Returns:
        The registered adapter.

    Example:
        >>> class MySEBlock(SEResidualBlock, MyBlock):
        ...     def residual(self, x):
        ...         return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        ...     def final_act(self, x):
        ...         return self.act(x)
        >>> register_se_block(MyBlock, MySEBlock, channels=lambda b, pos: b.conv2.out_channels)  # doctest: +SKIP
    """
    if not (issubclass(se_class, SEResidualBlock) and issubclass(se_class, block_class)):
        raise TypeError(
            f"register_se_block: {se_class.__name__} must subclass both SEResidualBlock and {block_class.__name__}"
        )
    unknown = set(positions) - set(SE_POSITIONS)
    if not positions or unknown:
        raise ValueError(f"register_se_block: positions must be a non-empty subset of {SE_POSITIONS}, got {positions}")
    adapter = SEAdapter(
        se_class,
        channels,
        tuple(positions),
        stage,
        description or block_class.__name__,
        num_stages,
        hidden,
        builtin_se,
        act_layer,
    )
    _ADAPTERS[block_class] = adapter
    _ADAPTERS[se_class] = adapter
    return adapter


# container class -> (find, adapter): SE sites that only the container can tell (VGG's ReLUs after a conv)
SiteFinder = Callable[[nn.Module], Iterable[tuple[nn.Module, int | None, int]]]
_SITE_FINDERS: dict[type[nn.Module], tuple[SiteFinder, SEAdapter]] = {}


def register_se_sites(
    container_class: type[nn.Module],
    se_class: type[nn.Module],
    find: SiteFinder,
    *,
    positions: tuple[str, ...],
    description: str,
    num_stages: int | None = None,
) -> SEAdapter:
    """Make :func:`se_plugins.add_se` put SE on modules that only their model can tell apart.

    For layers of a common class (VGG's ``nn.ReLU``) that get SE only at certain places of certain models:
    ``find(container)`` yields ``(module, stage, channels)`` for each site inside a ``container_class`` module (its
    SE class included, so SE already there is seen). Only ``se_class`` (the class a site's module is switched to)
    is registered as a block, never the common class, so no other model's ReLUs are touched.
    """
    adapter = SEAdapter(
        se_class,
        channels=lambda block, position: block.se.channels,
        positions=tuple(positions),
        stage=lambda name: None,
        description=description,
        num_stages=num_stages,
    )
    _ADAPTERS[se_class] = adapter
    _SITE_FINDERS[container_class] = (find, adapter)
    return adapter


def site_adapters(model: nn.Module) -> dict[int, SEAdapter]:
    """``id(module) -> adapter`` (with the site's stage and channels) for the sites of every container in ``model``."""
    found = {}
    for module in model.modules():
        for container_class, (find, adapter) in _SITE_FINDERS.items():
            if isinstance(module, container_class):
                for site, stage, channels in find(module):
                    found[id(site)] = dataclasses.replace(
                        adapter, channels=lambda block, position, c=channels: c, stage=lambda name, s=stage: s
                    )
    return found


def adapter_for(module: nn.Module) -> SEAdapter | None:
    """The adapter for ``module``'s class (its SE class included), or None when it is not a supported block."""
    return _ADAPTERS.get(type(module))


def supported_blocks() -> str:
    """Human-readable list of the registered block families (for error messages)."""
    names = sorted({a.description for a in _ADAPTERS.values()})
    return "; ".join(names)
