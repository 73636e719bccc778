"""SE adapter for timm's Inception-ResNet-v2 residual modules ``Block35``, ``Block17``, ``Block8``.

The SE paper builds SE-Inception-ResNet-v2 the way it builds SE-ResNet (Hu et al., Sec. 3.3, Fig. 3): SE on the
residual branch, before the add. A module computes ``act(conv2d(cat(branches)) * scale + x)``; the branch here is
``conv2d(cat(branches)) * scale`` (it has no norm: the 1x1 ``conv2d`` with bias ends it), so SE sees the branch as
it is added, and the fused path folds the gate into the add (``x + branch * gate``). Gating the unscaled branch
instead would be the same model up to a factor ``scale`` in SE's first FC weights. The final ``block8`` has no ReLU
after its add (``final_act`` is then the identity). Every position of the paper's integration study is supported.

The non-residual ``Mixed_5b``/``Mixed_6a``/``Mixed_7a`` (the stem's last module and the two reductions) get no SE:
the paper's rule for residual nets puts SE on residual branches, and a module without a branch would only take the
``"post"`` position, which would make ``add_se(position=...)`` fail on the net's residual modules. Stages follow
the module types (and grids): 1 = ``repeat`` (10 x Block35, 35x35), 2 = ``repeat_1`` (20 x Block17, 17x17),
3 = ``repeat_2`` + ``block8`` (10 x Block8, 8x8).
"""

import importlib

import torch

from .block import SEResidualBlock
from .registry import register_se_block

timm_irv2 = importlib.import_module("timm.models.inception_resnet_v2")  # also an entrypoint name


class _Residual:
    """Shared parts: identity shortcut, the branch's 1x1 ``conv2d`` scaled by ``scale``."""

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scaled(self, out: torch.Tensor) -> torch.Tensor:
        return self.conv2d(out) * self.scale


class ThreeBranches(_Residual):
    """``Block35``'s branch: three conv branches, concatenated, through the scaled ``conv2d``."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1))


class TwoBranches(_Residual):
    """``Block17``'s and ``Block8``'s branch: two conv branches, concatenated, through the scaled ``conv2d``."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(torch.cat((self.branch0(x), self.branch1(x)), 1))


class SETimmBlock35(ThreeBranches, SEResidualBlock, timm_irv2.Block35):
    """timm ``Block35`` (Inception-ResNet-A) with SE on the scaled residual branch."""

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)


class SETimmBlock17(TwoBranches, SEResidualBlock, timm_irv2.Block17):
    """timm ``Block17`` (Inception-ResNet-B) with SE on the scaled residual branch."""

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)


class SETimmBlock8(TwoBranches, SEResidualBlock, timm_irv2.Block8):
    """timm ``Block8`` (Inception-ResNet-C) with SE on the scaled residual branch; ``block8`` has no final ReLU."""

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu is not None:
            return self.relu(x)
        return x


def branch_channels(block: torch.nn.Module, position: str) -> int:
    """SE width of an Inception-ResNet module: its branch's, the output of the 1x1 ``conv2d``."""
    return block.conv2d.out_channels


for _block, _se_block, _stage in (
    (timm_irv2.Block35, SETimmBlock35, 1),
    (timm_irv2.Block17, SETimmBlock17, 2),
    (timm_irv2.Block8, SETimmBlock8, 3),
):
    register_se_block(
        _block,
        _se_block,
        channels=branch_channels,
        stage=lambda name, stage=_stage: stage,
        num_stages=3,
        description=f"timm Inception-ResNet-v2 {_block.__name__}",
    )
