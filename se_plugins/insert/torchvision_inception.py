"""SE adapter for torchvision's Inception modules: Inception-v3 (``InceptionA`` .. ``E``) and GoogLeNet.

SE sits on each Inception module's output, the SE paper's SE-Inception module (Fig. 2); GoogLeNet is the closest
torchvision net to the paper's BN-Inception base. Inception-v3 as in :mod:`se_plugins.insert.timm_inception_v3`
(same module names, same stages). GoogLeNet's nine ``Inception`` modules get stages from their names by grid
(224 px input): 1 = ``inception3a/3b`` (28x28), 2 = ``inception4a..4e`` (14x14), 3 = ``inception5a/5b`` (7x7).
The auxiliary classifiers get no SE.
"""

from __future__ import annotations

import importlib
import re

from torch import nn

from .output_block import OUTPUT_POSITIONS, SEOutputBlock
from .registry import register_se_block
from .timm_inception_v3 import OUTPUT_CHANNELS, register_inception_v3_modules

# not ``import torchvision.models.googlenet``: the names are also torchvision builder functions
tv_googlenet = importlib.import_module("torchvision.models.googlenet")
tv_inception = importlib.import_module("torchvision.models.inception")

_GOOGLENET_STAGE_RE = re.compile(r"(?:^|[._])inception([345])[a-e]$")


class SETorchvisionInceptionA(SEOutputBlock, tv_inception.InceptionA):
    """torchvision Inception-v3 ``InceptionA`` with SE on its output."""


class SETorchvisionInceptionB(SEOutputBlock, tv_inception.InceptionB):
    """torchvision Inception-v3 ``InceptionB`` with SE on its output."""


class SETorchvisionInceptionC(SEOutputBlock, tv_inception.InceptionC):
    """torchvision Inception-v3 ``InceptionC`` with SE on its output."""


class SETorchvisionInceptionD(SEOutputBlock, tv_inception.InceptionD):
    """torchvision Inception-v3 ``InceptionD`` with SE on its output."""


class SETorchvisionInceptionE(SEOutputBlock, tv_inception.InceptionE):
    """torchvision Inception-v3 ``InceptionE`` with SE on its output."""


register_inception_v3_modules(
    {n: getattr(tv_inception, n) for n in OUTPUT_CHANNELS},
    {n: globals()[f"SETorchvision{n}"] for n in OUTPUT_CHANNELS},
    "torchvision",
)


class SETorchvisionGoogLeNetInception(SEOutputBlock, tv_googlenet.Inception):
    """torchvision GoogLeNet ``Inception`` module with SE on its concatenated output."""


def _googlenet_stage(name: str) -> int | None:
    match = _GOOGLENET_STAGE_RE.search(name)
    return int(match.group(1)) - 2 if match else None


def _googlenet_channels(block: nn.Module, position: str) -> int:
    branches = (block.branch2, block.branch3, block.branch4)
    return block.branch1.conv.out_channels + sum(branch[-1].conv.out_channels for branch in branches)


register_se_block(
    tv_googlenet.Inception,
    SETorchvisionGoogLeNetInception,
    channels=_googlenet_channels,
    positions=OUTPUT_POSITIONS,
    stage=_googlenet_stage,
    num_stages=3,
    description="torchvision GoogLeNet Inception (SE on the module output)",
)
