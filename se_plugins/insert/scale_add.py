"""The fused SE add for training, without keeping the branch output for backward.

``shortcut + out * gate`` (``torch.addcmul``) makes autograd keep ``out`` (the branch's last BatchNorm output) only
for the gate's gradient, ``d loss / d gate[n, c] = sum_hw grad * out``: one activation per block that the block
without SE never keeps, about a quarter more training memory for a ResNet-50. The BatchNorm keeps its *input* ``z``
anyway (for its own backward), and ``out`` is a per-channel affine function of it, ``out = (z - mean) * a + beta``
with ``a = weight / sqrt(var + eps)`` (the batch's mean and biased variance in training, the running ones in eval),
so :class:`ScaleAdd` keeps ``z`` (no new memory: the same tensor) and four per-channel vectors, and computes the
gate's gradient as ``a * (sum_hw grad * z - mean * sum_hw grad) + beta * sum_hw grad``. The statistics come from the
norm's own kernel (no extra pass over ``z``), and the result is written into ``out`` (nothing keeps it), as the block
without SE adds its shortcut in place. Gradients equal the plain implementation's up to rounding. Used in
eager training only (the block falls back to ``torch.addcmul`` under TorchScript, FX, tracing, ``torch.compile``
and ``torch.export``, whose graphs schedule memory themselves).
"""

from __future__ import annotations

import torch
from torch import nn


def norm_with_affine(
    norm: nn.Module, z: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """``(norm(z), (mean, a, beta))`` with ``norm(z) == (z - mean) * a + beta`` per channel, or None for another norm.

    Only ``nn.BatchNorm2d`` (and ``nn.SyncBatchNorm`` in eval mode, whose statistics are then local) qualifies. In
    training the batch statistics come from the norm's own kernel (``torch.native_batch_norm``, what
    ``F.batch_norm`` runs on CPU, returns them), with the module's running-statistics update (momentum,
    ``num_batches_tracked``) as ``nn.BatchNorm2d.forward`` does it; in eval the running statistics are the affine.
    """
    if type(norm) is nn.SyncBatchNorm and norm.training:
        return None  # batch statistics over all processes: not computable from the local z
    if type(norm) not in (nn.BatchNorm2d, nn.SyncBatchNorm) or not norm.affine or z.dim() != 4:
        return None
    batch_stats = norm.training or not norm.track_running_stats
    if not batch_stats:
        out = norm(z)
        with torch.no_grad():
            a = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        return out, (norm.running_mean, a, norm.bias.detach())
    momentum = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(norm.num_batches_tracked)
    running = (norm.running_mean, norm.running_var) if norm.training else (None, None)
    out, mean, invstd = torch.native_batch_norm(z, norm.weight, norm.bias, *running, True, momentum, norm.eps)
    with torch.no_grad():
        a = norm.weight * invstd
    return out, (mean, a, norm.bias.detach())


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
        if out.dtype == shortcut.dtype == gate.dtype:
            # nothing keeps ``out`` (the norm keeps its input, the squeeze's sum nothing): write the result into it,
            # as the block without SE adds the shortcut in place (no new activation, no allocation)
            ctx.mark_dirty(out)
            return torch.addcmul(shortcut, out, gate, out=out)
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
            # sum_hw grad * ((z - mean) * a + beta) = a * (sum_hw grad * z - mean * sum_hw grad) + beta * sum_hw grad,
            # accumulated in float32 at least (autocast's half-precision activations)
            dtype = torch.promote_types(z.dtype, torch.float32)
            grad_acc = grad.to(dtype)
            grad_dot_z = (grad_acc * z.to(dtype)).sum(dim=(2, 3))
            grad_sum = grad_acc.sum(dim=(2, 3))
            mean, a, beta = (t.to(dtype) for t in (mean, a, beta))
            grad_gate = a * (grad_dot_z - mean * grad_sum) + beta * grad_sum
            grad_gate = grad_gate.view(gate.shape).to(gate.dtype)
        return grad_shortcut, grad_out, grad_gate, None, None, None, None
