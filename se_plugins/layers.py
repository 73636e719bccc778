"""The Squeeze-and-Excitation block (Hu et al., "Squeeze-and-Excitation Networks").

Parameter names and the hidden width follow timm's ``SEModule`` (``fc1``/``fc2`` 1x1 convs with bias, hidden width
``make_divisible(C / r, 8)``), so timm ``seresnet*`` state dicts load into models built here strictly.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from timm.layers import make_divisible
from torch import nn

SEInit = Literal["identity", "random"]
SE_INITS = ("identity", "random")


class SqueezeExcite(nn.Module):
    """Squeeze (global average pool) -> excite (FC C->C/r, ReLU, FC C/r->C, sigmoid) -> scale each channel.

    ``gate(x) = gate_gain * sigmoid(fc2(relu(fc1(mean(x)))))``. With the paper's form ``gate_gain`` is 1. The
    function-preserving ``init="identity"`` sets ``fc2`` to zero and ``gate_gain`` to 2, so every gate is exactly
    ``2 * sigmoid(0) = 1`` at the start while it stays a sigmoid gate whose gradient is not saturated
    (d gate / d logit = 0.5): the block computes the identity and can learn from there.

    ``gate_gain`` is a persistent buffer (not a parameter, so parameter counts match the paper). A state dict
    without it, such as timm's ``seresnet*`` weights, loads as the paper's SE (``gate_gain = 1``).

    Args:
        channels: Number of input (= output) channels.
        reduction: Reduction ratio r of the bottleneck; hidden width is ``make_divisible(channels / r, divisor)``.
        hidden_channels: Explicit hidden width (overrides ``reduction``).
        divisor: Hidden width is rounded to a multiple of this (timm's default, 8).
        init: ``"identity"`` (gates start at exactly 1) or ``"random"`` (the paper's: He-normal convs, zero bias).
        act_layer: Activation between the two FC layers.

    Example:
        >>> se = SqueezeExcite(256, reduction=16)
        >>> se(torch.randn(2, 256, 7, 7)).shape
        torch.Size([2, 256, 7, 7])
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        *,
        hidden_channels: int | None = None,
        divisor: int = 8,
        init: SEInit = "identity",
        act_layer: type[nn.Module] = nn.ReLU,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if reduction <= 0:
            raise ValueError(f"SqueezeExcite: reduction must be > 0, got {reduction}")
        dd = {"device": device, "dtype": dtype}
        hidden = hidden_channels or make_divisible(channels / reduction, divisor, round_limit=0.0)
        self.channels = channels
        self.hidden_channels = hidden
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True, **dd)
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True, **dd)
        self.register_buffer("gate_gain", torch.ones((), **dd))
        self.reset_parameters(init)

    def reset_parameters(self, init: SEInit = "identity") -> None:
        """(Re-)initialise: ``"identity"`` makes every gate exactly 1, ``"random"`` is the paper's init."""
        if init not in SE_INITS:
            raise ValueError(f"SqueezeExcite: init must be one of {SE_INITS}, got {init!r}")
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(fc.bias)
            if init == "identity":
                nn.init.zeros_(self.fc2.weight)
                self.gate_gain.fill_(2.0)
            else:
                self.gate_gain.fill_(1.0)

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled ``(N, C)`` input: a sum over H, W (in float32 at least) divided by ``H * W``, in ``x``'s dtype.

        The mean up to rounding (no float16 overflow); its gradient is a broadcast view, where ``mean``'s backward
        writes a full-size tensor (one write per block less in training).
        """
        total = x.sum((2, 3), dtype=torch.promote_types(x.dtype, torch.float32))
        return (total / (x.shape[2] * x.shape[3])).to(x.dtype)

    def excite(self, s: torch.Tensor) -> torch.Tensor:
        """The gate ``(N, C, 1, 1)`` for the pooled ``s`` ``(N, C)``.

        The FC layers run as matrix products on the pooled vector: the 1x1 convolutions' result up to float
        rounding, at about half their cost (these products are tiny; a convolution call has more overhead).
        """
        s = self.act(nn.functional.linear(s, self.fc1.weight.flatten(1), self.fc1.bias))
        s = nn.functional.linear(s, self.fc2.weight.flatten(1), self.fc2.bias)
        return (torch.sigmoid(s) * self.gate_gain)[:, :, None, None]

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate of shape ``(N, C, 1, 1)`` for input ``x`` of shape ``(N, C, H, W)``."""
        return self.excite(self.squeeze(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The plain form, computed exactly as timm's SEModule (1x1 convolutions): bit-identical with its weights.
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * (torch.sigmoid(s) * self.gate_gain)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # timm seresnet / paper SE weights carry no gate_gain: they are the plain sigmoid gate (gain 1).
        if prefix + "fc1.weight" in state_dict and prefix + "gate_gain" not in state_dict:
            state_dict[prefix + "gate_gain"] = torch.ones_like(self.gate_gain)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden_channels}"
