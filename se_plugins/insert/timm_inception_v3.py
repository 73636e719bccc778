"""SE adapter for timm's Inception-v3 modules (``InceptionA`` .. ``InceptionE``): SE on each module's output.

The SE paper's SE-Inception module (Hu et al., Fig. 2): the Inception module is the transformation, so SE squeezes
and rescales the module's concatenated output. A module has no residual add: the only position is ``"post"``
(:class:`~se_plugins.SEOutputBlock`, the module's own forward then SE). Stages follow the grid the modules work on
(299 px input): 1 = the 35x35 ``Mixed_5b..5d`` (A), 2 = the 17x17 ``Mixed_6a..6e`` (B reduces to it, then C),
3 = the 8x8 ``Mixed_7a..7c`` (D reduces to it, then E), from the ``Mixed_<5|6|7>`` names (timm and torchvision
name them alike). The auxiliary classifier gets no SE.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from torch import nn

from .output_block import OUTPUT_POSITIONS, SEOutputBlock
from .registry import register_se_block

timm_iv3 = importlib.import_module("timm.models.inception_v3")  # also an entrypoint name

_STAGE_RE = re.compile(r"(?:^|[._])Mixed_([567])[a-e]$")


def stage_from_mixed_name(name: str) -> int | None:
    """Stage 1..3 of an Inception-v3 module named ``...Mixed_<5|6|7><letter>``, or None."""
    match = _STAGE_RE.search(name)
    return int(match.group(1)) - 4 if match else None


def _convs_out(block: nn.Module, *names: str) -> int:
    return sum(getattr(block, name).conv.out_channels for name in names)


def _in(block: nn.Module, name: str) -> int:
    return getattr(block, name).conv.in_channels


# width of each module's concatenated output, from its branches (a pooling branch passes its input's channels)
OUTPUT_CHANNELS: dict[str, Callable[[nn.Module], int]] = {
    "InceptionA": lambda b: _convs_out(b, "branch1x1", "branch5x5_2", "branch3x3dbl_3", "branch_pool"),
    "InceptionB": lambda b: _convs_out(b, "branch3x3", "branch3x3dbl_3") + _in(b, "branch3x3"),
    "InceptionC": lambda b: _convs_out(b, "branch1x1", "branch7x7_3", "branch7x7dbl_5", "branch_pool"),
    "InceptionD": lambda b: _convs_out(b, "branch3x3_2", "branch7x7x3_4") + _in(b, "branch3x3_1"),
    "InceptionE": lambda b: _convs_out(
        b, "branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"
    ),
}


def register_inception_v3_modules(classes: dict[str, type[nn.Module]], se_classes: dict, owner: str) -> None:
    """Register the five Inception-v3 module classes of one library (``owner``: timm or torchvision)."""
    for name, block_class in classes.items():
        width = OUTPUT_CHANNELS[name]
        register_se_block(
            block_class,
            se_classes[name],
            channels=lambda block, position, width=width: width(block),
            positions=OUTPUT_POSITIONS,
            stage=stage_from_mixed_name,
            num_stages=3,
            description=f"{owner} Inception-v3 {name} (SE on the module output)",
        )


class SETimmInceptionA(SEOutputBlock, timm_iv3.InceptionA):
    """timm Inception-v3 ``InceptionA`` (35x35) with SE on its output."""


class SETimmInceptionB(SEOutputBlock, timm_iv3.InceptionB):
    """timm Inception-v3 ``InceptionB`` (35x35 -> 17x17 reduction) with SE on its output."""


class SETimmInceptionC(SEOutputBlock, timm_iv3.InceptionC):
    """timm Inception-v3 ``InceptionC`` (17x17) with SE on its output."""


class SETimmInceptionD(SEOutputBlock, timm_iv3.InceptionD):
    """timm Inception-v3 ``InceptionD`` (17x17 -> 8x8 reduction) with SE on its output."""


class SETimmInceptionE(SEOutputBlock, timm_iv3.InceptionE):
    """timm Inception-v3 ``InceptionE`` (8x8) with SE on its output."""


register_inception_v3_modules(
    {n: getattr(timm_iv3, n) for n in OUTPUT_CHANNELS},
    {n: globals()[f"SETimm{n}"] for n in OUTPUT_CHANNELS},
    "timm",
)
