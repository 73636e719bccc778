"""Blocks that keep their own forward and their own attribute names: an attention slot not named ``se``, a
shortcut module named ``shortcut``.

timm's CSPNet and BYOB blocks build their channel attention into a slot of their own (``attn``, ``attn2``,
``attn_last``; ``nn.Identity()`` without attention) and their SE variants (``cs3sedarknet_*``, ``seresnet33ts``)
fill exactly that slot. An SE class for such a block names the slot in ``se_slot``: :func:`se_plugins.add_se` puts
the :class:`~se_plugins.SqueezeExcite` there (so the state-dict keys are the SE variant's, ``...attn.fc1.weight``)
and tells an existing SE by that slot; ``block.se`` reads the slot back for code that looks for SE there.
"""

from torch import nn

from .block import SEResidualBlock


class SESlotBlock(SEResidualBlock):
    """Mixin for ``class SEX(SESlotBlock, X): forward = X.forward; se_slot = "attn"``: SE lives in ``X``'s slot."""

    se_slot = "se"
    # ``se`` and ``shortcut`` are read-backs for Python code; TorchScript sees the submodules themselves
    __jit_unused_properties__ = ["se", "shortcut"]

    @property
    def se(self) -> nn.Module:
        """The module in the block's attention slot (the SE after :func:`se_plugins.add_se`)."""
        return self._modules[self.se_slot]


class ShortcutModule:
    """Mixin for blocks whose shortcut is a submodule named ``shortcut`` (timm BYOB, ConvNeXt).

    :class:`SEResidualBlock` has a ``shortcut(x)`` method; this property hands back the block's own module (or
    None) under that name instead, so the block's forward and :class:`SEResidualBlock`'s both call it.
    """

    __jit_unused_properties__ = ["se", "shortcut"]

    @property
    def shortcut(self) -> nn.Module | None:
        return self._modules["shortcut"]
