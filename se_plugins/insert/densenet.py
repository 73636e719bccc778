"""SE adapter for the dense layers of timm's and torchvision's DenseNet: SE on each layer's new features.

DenseNet has no residual add: a dense layer (BN-ReLU-1x1 conv, BN-ReLU-3x3 conv) computes ``growth_rate`` new
channels that its dense block concatenates to everything before. The SE paper's rule for modules without an identity
branch (Inception, Fig. 2) is SE on the module's output before it is aggregated; a dense layer's aggregation is the
concatenation, so SE recalibrates the layer's new features before they join the block's running concatenation (one
of the placements of the SE-DenseNet variants in the literature). Each feature map is then scaled once, by the layer
that made it, and every later layer and the transition see the recalibrated maps. Transitions get none: they are 3 per
net against 58..120 dense layers, and they only compress and pool. SE sees ``growth_rate`` channels (32 or 48);
with timm's ``make_divisible(C / r, 8)`` its hidden width is at least 8.

A dense layer takes a tensor or the block's list of tensors; the SE classes keep the layer's own forward (eager, FX,
``torch.compile``, memory-efficient checkpointing, TorchScript). torchvision declares its forward for a tensor and
adds a list overload with ``torch.jit._overload_method``, which the SE class's copy of that forward cannot carry: under
TorchScript only, the torchvision SE layer concatenates the list first and passes one tensor (the layer wraps it in a
list and concatenates again: the same numbers, one extra copy of the layer's input).
"""

import re
from typing import List, Union  # noqa: UP035  (TorchScript reads these annotations)

import torch
import torchvision.models.densenet as tv_densenet
from timm.models import densenet as timm_densenet
from torch import nn

from .output_block import OUTPUT_POSITIONS, SEOutputBlock
from .registry import register_se_block

_STAGE_RE = re.compile(r"(?:^|[._])denseblock(\d+)[._]denselayer\d+$")
DENSENET_STAGES = 4


def stage_from_dense_block(name: str) -> int | None:
    """Stage 1..4 of a dense layer named ``...denseblock<stage>.denselayer<i>`` (timm, torchvision), or None."""
    match = _STAGE_RE.search(name)
    return int(match.group(1)) if match else None


class SETimmDenseLayer(SEOutputBlock, timm_densenet.DenseLayer):
    """timm ``DenseLayer`` with SE on its ``growth_rate`` new features."""

    def forward(self, x: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:  # noqa: UP006, UP007
        return self.se(self.block_forward(x))


class SETorchvisionDenseLayer(SEOutputBlock, tv_densenet._DenseLayer):
    """torchvision ``_DenseLayer`` with SE on its ``growth_rate`` new features."""

    def forward(self, x: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:  # noqa: UP006, UP007
        if torch.jit.is_scripting():
            if isinstance(x, torch.Tensor):
                return self.se(self.block_forward(x))
            return self.se(self.block_forward(torch.cat(x, 1)))
        return self.se(self.block_forward(x))


def _growth_channels(block: nn.Module, position: str) -> int:
    return block.conv2.out_channels


for _block, _se_class, _library in (
    (timm_densenet.DenseLayer, SETimmDenseLayer, "timm"),
    (tv_densenet._DenseLayer, SETorchvisionDenseLayer, "torchvision"),
):
    register_se_block(
        _block,
        _se_class,
        channels=_growth_channels,
        positions=OUTPUT_POSITIONS,
        stage=stage_from_dense_block,
        description=f"{_library} DenseNet dense layer (SE on its new features, before the concatenation)",
        num_stages=DENSENET_STAGES,
    )
