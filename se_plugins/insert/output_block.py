"""SE on a module's output, for families without a residual add (VGG layers, Inception modules, dense layers).

The paper puts SE on the output of each Inception module (Fig. 2) and after the non-linearity in VGG. A module gets
it the same way a residual block does: its class is switched to ``class SEMine(SEOutputBlock, Mine): pass`` and
:func:`se_plugins.add_se` adds ``se``. The only position is ``"post"``: SE scales what the module returns (there is
no residual branch to put it on).
"""

import types

import torch

from .block import SEResidualBlock

OUTPUT_POSITIONS = ("post",)


def _renamed(function: types.FunctionType, name: str) -> types.FunctionType:
    """A copy of ``function`` under another name (TorchScript names a compiled method after its function)."""
    copy = types.FunctionType(function.__code__, function.__globals__, name, function.__defaults__, function.__closure__)
    copy.__qualname__ = f"{function.__qualname__.rpartition('.')[0]}.{name}".lstrip(".")
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy


class SEOutputBlock(SEResidualBlock):
    """Mixin: ``forward(x) = se(block_forward(x))``, ``block_forward`` being the module class's own ``forward``.

    ``class SEMine(SEOutputBlock, Mine): pass`` is enough: the subclass gets ``block_forward`` (``Mine.forward``
    under its own name, so TorchScript compiles both methods) unless it defines one.
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "block_forward" in cls.__dict__:
            return
        for base in cls.__mro__[1:]:
            if not issubclass(base, SEResidualBlock) and "forward" in base.__dict__:
                cls.block_forward = _renamed(base.__dict__["forward"], "block_forward")
                return

    def block_forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - set for each SE class
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.block_forward(x))
