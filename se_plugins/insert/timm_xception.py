"""SE adapters for timm's Xception blocks: ``legacy_xception``'s ``Block`` and the aligned ``XceptionModule`` /
``PreXceptionModule`` (``xception41/65/71``, ``xception41p/65p``).

Xception blocks are residual (Chollet 2017): a stack of separable convs plus a (projection) shortcut. SE goes where
the SE paper puts it in residual units (Hu et al., Fig. 3): on the branch output, before the add. None of timm's
Xceptions has channel attention of its own.

- ``legacy_xception`` ``Block``: the branch is ``rep`` (ending in BN, or BN + max-pool in the strided blocks); no
  activation follows the add (the next block starts with ReLU). Every position of the paper's integration study is
  supported; stages: 1 = entry flow (``block1..3``), 2 = middle flow (``block4..11``), 3 = exit flow (``block12``).
- aligned ``XceptionModule``/``PreXceptionModule``: SE scales the ``stack`` output inside the module's own
  ``_residual`` (which both ``forward`` and timm's ``forward_with_tap`` feature path call), so the module keeps its
  forward, drop-path and feature taps. The last exit-flow module has no skip (``no_skip``): SE then scales its
  output. ``position="standard"`` only, no fused path; their names (``blocks.<i>``) carry no stage, so
  ``add_se(stages=...)`` is rejected with a one-line error.
"""

import importlib
import re

import torch
from torch import nn

from .block import SEResidualBlock
from .output_block import _renamed
from .registry import register_se_block

timm_xception = importlib.import_module("timm.models.xception")  # timm.models.xception: also a function
timm_aligned = importlib.import_module("timm.models.xception_aligned")

_LEGACY_STAGE_RE = re.compile(r"(?:^|[._])block(\d+)$")


def legacy_stage(name: str) -> int | None:
    """Stage of a legacy Xception block named ``...block<i>``: 1 = entry flow (1..3), 2 = middle (4..11), 3 = exit."""
    match = _LEGACY_STAGE_RE.search(name)
    if match is None:
        return None
    index = int(match.group(1))
    return 1 if index <= 3 else 2 if index <= 11 else 3


class LegacyBlockResidual:
    """The original (Keras-port) Xception ``Block``'s parts, as timm's ``legacy_xception`` and smp have it: the
    branch ``rep``, a projection shortcut ``skip`` + ``skipbn`` (or the identity), no activation after the add."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.rep(x)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip is not None:
            return self.skipbn(self.skip(x))
        return x

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SETimmXceptionBlock(LegacyBlockResidual, SEResidualBlock, timm_xception.Block):
    """timm ``legacy_xception`` ``Block`` with SE on ``rep``'s output, before the add."""


def legacy_channels(block: nn.Module, position: str) -> int:
    """SE width of a legacy Xception ``Block``: its input's (``pre``) or its last BN's channels."""
    if position == "pre":
        return next(m for m in block.rep if type(m).__name__ == "SeparableConv2d").conv1.in_channels
    return [m for m in block.rep if isinstance(m, nn.BatchNorm2d)][-1].num_features


register_se_block(
    timm_xception.Block,
    SETimmXceptionBlock,
    channels=legacy_channels,
    stage=legacy_stage,
    num_stages=3,
    description="timm legacy Xception Block",
)


class _SEAlignedResidual:
    """SE on the separable-conv stack's output, inside the module's own ``_residual`` (before the add)."""

    __jit_unused_properties__ = ["shortcut"]  # TorchScript reads the submodule itself

    @property
    def shortcut(self) -> nn.Module | None:
        """The module's own ``shortcut`` (a submodule, or None kept as a plain attribute), which the class's
        ``SEResidualBlock.shortcut()`` method would otherwise hide."""
        return self._modules["shortcut"] if "shortcut" in self._modules else self.__dict__["shortcut"]

    def _residual(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self._block_residual(self.se(x), skip)


class SETimmXceptionModule(_SEAlignedResidual, SEResidualBlock, timm_aligned.XceptionModule):
    """timm aligned ``XceptionModule`` with SE on its stack's output, before the add."""

    forward = timm_aligned.XceptionModule.forward
    _block_residual = _renamed(timm_aligned.XceptionModule._residual, "_block_residual")

    def prune_to_tap(self) -> None:
        """timm's pruning to the feature tap drops the last separable conv, and SE with it."""
        timm_aligned.XceptionModule.prune_to_tap(self)
        self.se = nn.Identity()


class SETimmPreXceptionModule(_SEAlignedResidual, SEResidualBlock, timm_aligned.PreXceptionModule):
    """timm aligned ``PreXceptionModule`` (pre-activation) with SE on its stack's output, before the add."""

    forward = timm_aligned.PreXceptionModule.forward
    _block_residual = _renamed(timm_aligned.PreXceptionModule._residual, "_block_residual")

    def prune_to_tap(self) -> None:
        """timm's pruning to the feature tap drops the last separable conv, and SE with it."""
        timm_aligned.PreXceptionModule.prune_to_tap(self)
        self.se = nn.Identity()


for _block, _se_block in (
    (timm_aligned.XceptionModule, SETimmXceptionModule),
    (timm_aligned.PreXceptionModule, SETimmPreXceptionModule),
):
    register_se_block(
        _block,
        _se_block,
        channels=lambda block, position: block.out_channels,
        positions=("standard",),
        stage=lambda name: None,
        description=f"timm aligned Xception {_block.__name__}",
    )
