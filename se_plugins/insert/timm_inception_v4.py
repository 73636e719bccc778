"""SE adapter for timm's Inception-v4 modules: SE on the output of every Inception and Reduction module.

The SE paper's SE-Inception module (Hu et al., Fig. 2) applied to Inception-v4 (Szegedy et al. 2016): each module
of the net -- the stem's ``Mixed3a/4a/5a``, ``InceptionA/B/C`` and ``ReductionA/B`` -- has SE squeeze and rescale
its concatenated output (:class:`~se_plugins.SEOutputBlock`, position ``"post"`` only). timm names the modules
``features.<i>``, so the stage comes from the module class, by the grid it outputs (299 px input): 1 = the stem's
mixed modules (73x73 .. 35x35), 2 = the 35x35 ``InceptionA``, 3 = ``ReductionA`` + the 17x17 ``InceptionB``,
4 = ``ReductionB`` + the 8x8 ``InceptionC`` (as Inception-v3's Mixed_5/6/7; the feature taps end stages 2..4).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from .output_block import OUTPUT_POSITIONS, SEOutputBlock
from .registry import register_se_block

timm_iv4 = importlib.import_module("timm.models.inception_v4")  # also an entrypoint name


def _out(module: nn.Module) -> int:
    """Output channels of a ConvNormAct or of a Sequential ending in one."""
    return (module[-1] if isinstance(module, nn.Sequential) else module).conv.out_channels


def _in(module: nn.Module) -> int:
    return (module[0] if isinstance(module, nn.Sequential) else module).conv.in_channels


def _sum_out(*names: str) -> Callable[[nn.Module], int]:
    return lambda b: sum(_out(getattr(b, n)) for n in names)


# (stage, width of the concatenated output: conv branches + the input's channels through a max-pool branch)
MODULES: dict[str, tuple[int, Callable[[nn.Module], int]]] = {
    "Mixed3a": (1, lambda b: _out(b.conv) + _in(b.conv)),
    "Mixed4a": (1, _sum_out("branch0", "branch1")),
    "Mixed5a": (1, lambda b: _out(b.conv) + _in(b.conv)),
    "InceptionA": (2, _sum_out("branch0", "branch1", "branch2", "branch3")),
    "ReductionA": (3, lambda b: _out(b.branch0) + _out(b.branch1) + _in(b.branch0)),
    "InceptionB": (3, _sum_out("branch0", "branch1", "branch2", "branch3")),
    "ReductionB": (4, lambda b: _out(b.branch0) + _out(b.branch1) + _in(b.branch0)),
    "InceptionC": (4, _sum_out("branch0", "branch1_1a", "branch1_1b", "branch2_3a", "branch2_3b", "branch3")),
}


class SETimmMixed3a(SEOutputBlock, timm_iv4.Mixed3a):
    """timm Inception-v4 stem ``Mixed3a`` with SE on its output."""


class SETimmMixed4a(SEOutputBlock, timm_iv4.Mixed4a):
    """timm Inception-v4 stem ``Mixed4a`` with SE on its output."""


class SETimmMixed5a(SEOutputBlock, timm_iv4.Mixed5a):
    """timm Inception-v4 stem ``Mixed5a`` with SE on its output."""


class SETimmInceptionV4A(SEOutputBlock, timm_iv4.InceptionA):
    """timm Inception-v4 ``InceptionA`` with SE on its output."""


class SETimmReductionA(SEOutputBlock, timm_iv4.ReductionA):
    """timm Inception-v4 ``ReductionA`` with SE on its output."""


class SETimmInceptionV4B(SEOutputBlock, timm_iv4.InceptionB):
    """timm Inception-v4 ``InceptionB`` with SE on its output."""


class SETimmReductionB(SEOutputBlock, timm_iv4.ReductionB):
    """timm Inception-v4 ``ReductionB`` with SE on its output."""


class SETimmInceptionV4C(SEOutputBlock, timm_iv4.InceptionC):
    """timm Inception-v4 ``InceptionC`` with SE on its output."""


_SE_CLASSES = {
    "Mixed3a": SETimmMixed3a, "Mixed4a": SETimmMixed4a, "Mixed5a": SETimmMixed5a, "InceptionA": SETimmInceptionV4A,
    "ReductionA": SETimmReductionA, "InceptionB": SETimmInceptionV4B, "ReductionB": SETimmReductionB,
    "InceptionC": SETimmInceptionV4C,
}  # fmt: skip

for _name, (_stage, _width) in MODULES.items():
    register_se_block(
        getattr(timm_iv4, _name),
        _SE_CLASSES[_name],
        channels=lambda block, position, width=_width: width(block),
        positions=OUTPUT_POSITIONS,
        stage=lambda name, stage=_stage: stage,
        num_stages=4,
        description=f"timm Inception-v4 {_name} (SE on the module output)",
    )
