"""SE's fused add after a batch-statistics BatchNorm, for compiled training: ``shortcut + bn(z) * gate(pool bn(z))``.

Compiled, the block's last norm, SE's pool and the scale-add differentiated op by op make inductor write the norm
output in forward (for the pool) and run one more block-sized reduction in backward than the block without SE (the
gate's ``sum_hw grad * bn(z)`` per sample and channel, then the norm's per-channel sums of the result). Here two small
autograd functions carry the closed form of ``norm_scale_add.py`` in a form ``torch.compile`` traces (no state
shared between them; both backward formulas are plain tensor code that inductor fuses with its neighbours):

- :class:`BatchStatsPool`: ``z -> (mean, var, mean_hw z)``, the batch statistics and (optionally) SE's pool of the
  norm input; backward: the pointwise ``dL/dz`` of those three.
- :class:`NormScaleAdd`: ``shortcut + ((z - mean) * invstd * weight + bias) * gate``; backward: from ``S1 = sum_hw
  grad`` and ``S2 = sum_hw grad * (z - mean)`` (one reduction over ``grad`` and ``z``) the gradients of the gate,
  statistics, weight and bias, and the pointwise ``dL/dz = grad * gate * invstd * weight``.

Autograd adds the two ``dL/dz``; in the compiled backward graph that sum is one pointwise kernel, so SE's backward
reads ``grad`` and ``z`` once more for ``S1``/``S2`` and writes nothing block-sized that the base does not. The
excitation between the pool and the gate stays ordinary autograd. Running statistics are updated as
``nn.BatchNorm2d`` does. Used only under ``torch.compile`` (eager training has ``norm_scale_add.py``; ``torch.export``
keeps the norm op), for float32/float64 (half precision keeps the op-by-op form).
"""

from __future__ import annotations

import torch
from torch import nn

from .norm_scale_add import FUSED_DTYPES


class BatchStatsPool(torch.autograd.Function):
    """``(mean, var, mean_hw z)`` of ``z`` ``(N, C, H, W)``: per-channel batch mean and biased variance over
    ``N, H, W``, and the per-sample-and-channel mean over ``H, W`` (``None`` when ``pool`` is False)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, pool: bool):  # noqa: ANN001, ANN205
        var, mean = torch.var_mean(z, dim=(0, 2, 3), correction=0)
        ctx.save_for_backward(z, mean)
        if not pool:
            return mean, var, None
        return mean, var, z.sum((2, 3)) / (z.shape[2] * z.shape[3])

    @staticmethod
    def backward(ctx, grad_mean, grad_var, grad_pooled):  # noqa: ANN001, ANN205
        z, mean = ctx.saved_tensors
        n, _, h, w = z.shape
        count = n * h * w
        grad = (grad_mean / count)[:, None, None] + (2.0 / count) * grad_var[:, None, None] * (z - mean[:, None, None])
        if grad_pooled is not None:
            grad = grad + (grad_pooled / (h * w))[:, :, None, None]
        return grad, None


class NormScaleAdd(torch.autograd.Function):
    """``shortcut + ((z - mean) * invstd * weight + bias) * gate`` with its closed-form backward (module doc)."""

    @staticmethod
    def forward(ctx, z, shortcut, gate, mean, invstd, weight, bias):  # noqa: ANN001, ANN205, PLR0913
        ctx.save_for_backward(z, gate, mean, invstd, weight, bias)
        a = invstd * weight
        normed = (z - mean[:, None, None]) * a[:, None, None] + bias[:, None, None]
        return torch.addcmul(shortcut, normed, gate)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        z, gate, mean, invstd, weight, bias = ctx.saved_tensors
        grad_sum = grad.sum((2, 3))
        grad_dot_centered = (grad * (z - mean[:, None, None])).sum((2, 3))
        a = invstd * weight
        gated_sum = (gate.flatten(1) * grad_sum).sum(0)
        gated_dot = (gate.flatten(1) * grad_dot_centered).sum(0)
        return (
            grad * (gate * a[:, None, None]),  # z (the direct path; the statistics' part comes via mean, invstd)
            grad,  # shortcut
            (a * grad_dot_centered + bias * grad_sum)[:, :, None, None],  # gate
            -a * gated_sum,  # mean
            weight * gated_dot,  # invstd
            invstd * gated_dot,  # weight
            gated_sum,  # bias
        )


def is_exporting() -> bool:
    """``torch.compiler.is_exporting()``, read from the flag ``torch.export`` sets: dynamo before torch 2.12 traces
    that function as a constant True under ``torch.compile`` too, which kept compiled training off this form there."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def uses_batch_statistics(norm: nn.Module) -> bool:
    """Whether ``norm`` is an ``nn.BatchNorm2d`` with affine parameters that normalises with the batch's statistics now
    (training, or untracked running statistics)."""
    return type(norm) is nn.BatchNorm2d and norm.affine and (norm.training or not norm.track_running_stats)


def batch_norm_scale_add(
    norm: nn.Module, z: torch.Tensor, shortcut: torch.Tensor, se: nn.Module, pooled_z: torch.Tensor | None = None
) -> torch.Tensor:
    """``shortcut + norm(z) * se.gate(norm(z))`` for a norm that :func:`uses_batch_statistics`, updating its running
    statistics as its forward does; the closed-form backward for float32/float64, the op-by-op form otherwise (half
    precision, one value per channel). ``pooled_z``: SE's pool of ``z`` where the caller has it from upstream
    (``fixed_norm_add.pooled_pointwise_conv``)."""
    count = z.numel() // z.shape[1] if z.dim() == 4 else 0  # noqa: PLR2004 (N, C, H, W)
    if count < 2 or z.dtype not in FUSED_DTYPES or norm.weight.dtype != z.dtype:
        out = norm(z)
        return torch.addcmul(shortcut, out, se.gate(out))
    mean, var, pooled = BatchStatsPool.apply(z, pooled_z is None)
    if pooled_z is not None:
        pooled = pooled_z
    if norm.training and norm.track_running_stats:
        with torch.no_grad():
            norm.num_batches_tracked.add_(1)
            tracked = norm.num_batches_tracked.to(mean.dtype)
            momentum = 1.0 / tracked if norm.momentum is None else norm.momentum
            norm.running_mean.mul_(1 - momentum).add_(mean * momentum)
            norm.running_var.mul_(1 - momentum).add_(var * (momentum * count / (count - 1)))
    invstd = torch.rsqrt(var + norm.eps)
    gate = se.excite((pooled - mean) * (invstd * norm.weight) + norm.bias)
    return NormScaleAdd.apply(z, shortcut, gate, mean, invstd, norm.weight, norm.bias)
