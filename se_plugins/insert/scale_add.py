"""The fused SE add for training, without keeping the branch output for backward.

``shortcut + out * gate`` (``torch.addcmul``) makes autograd keep ``out`` (the branch's last BatchNorm output) only
for the gate's gradient, ``d loss / d gate[n, c] = sum_hw grad * out``: one activation per block that the block
without SE never keeps, about a quarter more training memory for a ResNet-50. The BatchNorm keeps its *input* ``z``
anyway (for its own backward), and ``out`` is a per-channel affine function of it, ``out = (z - mean) * a + beta``
with ``a = weight / sqrt(var + eps)`` (the batch's mean and biased variance in training, the running ones in eval),
so :class:`ScaleAdd` keeps ``z`` (no new memory: the same tensor) and four per-channel vectors, and recomputes
``out`` in backward, following BatchNorm's own order of operations. Gradients equal the plain implementation's up
to rounding. Used in eager training only (the block falls back to ``torch.addcmul`` under TorchScript, FX, tracing,
``torch.compile`` and ``torch.export``, whose graphs schedule memory themselves).
"""

from __future__ import annotations

import torch
from torch import nn


def affine_of(norm: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(mean, a, beta)`` with ``norm(z) == (z - mean) * a + beta`` per channel, or None for another norm.

    Only ``nn.BatchNorm2d`` (and ``nn.SyncBatchNorm`` in eval mode, whose statistics are then local) qualifies; in
    training the batch statistics are recomputed from ``z`` (one extra read of ``z``, no autograd).
    """
    if type(norm) is nn.SyncBatchNorm and norm.training:
        return None  # batch statistics over all processes: not computable from the local z
    if type(norm) not in (nn.BatchNorm2d, nn.SyncBatchNorm) or not norm.affine:
        return None
    dtype = _accumulation_dtype(z)
    with torch.no_grad():
        if norm.training or not norm.track_running_stats:
            var, mean = torch.var_mean(z.to(dtype), dim=(0, 2, 3), correction=0)
        else:
            mean, var = norm.running_mean.to(dtype), norm.running_var.to(dtype)
        a = norm.weight.to(dtype) * torch.rsqrt(var + norm.eps)
        return mean, a, norm.bias.to(dtype)


def _accumulation_dtype(z: torch.Tensor) -> torch.dtype:
    """float32 for half-precision activations (autocast), else the activations' own dtype."""
    return torch.promote_types(z.dtype, torch.float32)


class ScaleAdd(torch.autograd.Function):
    """``shortcut + out * gate`` keeping ``z`` (``out = (z - mean) * a + beta``) instead of ``out`` for backward."""

    @staticmethod
    def forward(  # noqa: PLR0913
        ctx,  # noqa: ANN001
        shortcut: torch.Tensor,
        out: torch.Tensor,
        gate: torch.Tensor,
        z: torch.Tensor,
        mean: torch.Tensor,
        a: torch.Tensor,
        beta: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(gate, z, mean, a, beta)
        ctx.dtypes = (shortcut.dtype, out.dtype)
        return torch.addcmul(shortcut, out, gate)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        gate, z, mean, a, beta = ctx.saved_tensors
        shortcut_dtype, out_dtype = ctx.dtypes
        grad_shortcut = grad_out = grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_shortcut = grad.to(shortcut_dtype)
        if ctx.needs_input_grad[1]:
            grad_out = (grad * gate).to(out_dtype)
        if ctx.needs_input_grad[2]:
            shape = (1, -1, 1, 1)
            dtype = mean.dtype
            out = (z.to(dtype) - mean.view(shape)) * a.view(shape) + beta.view(shape)
            grad_gate = (grad.to(dtype) * out).sum(dim=(2, 3), keepdim=True).to(gate.dtype)
        return grad_shortcut, grad_out, grad_gate, None, None, None, None
