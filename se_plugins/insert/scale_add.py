"""The fused SE add for training, without keeping the branch output for backward.

``shortcut + out * gate`` (``torch.addcmul``) makes autograd keep ``out`` (the branch's last BatchNorm output) only
for the gate's gradient, ``d loss / d gate[n, c] = sum_hw grad * out``: one activation per block that the block
without SE never keeps, about a quarter more training memory for a ResNet-50. The BatchNorm keeps its *input* ``z``
anyway (for its own backward), and ``out`` is a per-channel affine function of it, ``out = (z - mean) * a + beta``
with ``a = weight / sqrt(var + eps)`` (the batch's mean and biased variance in training, the running ones in eval),
so :class:`ScaleAdd` keeps ``z`` (no new memory: the same tensor) and four per-channel vectors, and computes the
gate's gradient as ``a * sum_hw grad * (z - mean) + beta * sum_hw grad`` (:func:`per_channel_grad_sums`). The
statistics come from the norm's own kernel (no extra pass over ``z``), and the result is written into ``out``
(nothing keeps it), as the block without SE adds its shortcut in place. Gradients equal the plain implementation's
up to rounding. Used in eager training only (the block falls back to ``torch.addcmul`` under TorchScript, FX,
tracing, ``torch.compile`` and ``torch.export``, whose graphs schedule memory themselves -- compiled with a
fixed-statistics norm, to ``fixed_norm_add.py``); in float32/float64 with the norm's fused backward
(``norm_scale_add.py``), alone after the norm's own autograd in half precision; not for blocks under
``SCALE_ADD_MIN_ELEMENTS``.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .fixed_norm_add import fixed_norm_affine

# Blocks whose norm input has fewer elements keep ``torch.addcmul`` after the norm: there ``ScaleAdd`` saves under
# 256 KiB (fp32) per block while its Python autograd function costs a fixed time per call -- HRNet-W18-small's many
# small branch blocks, batch 2 at 128^2 (in-process A/B, 21 repeats, 2-core AMD EPYC): training step 0.979x (1 thread)
# and 0.956x (2 threads) without it below 2^16, for +1.9 % peak memory (+0.2 % at batch 8, 224^2).
SCALE_ADD_MIN_ELEMENTS = 2**16


def prepare_batch_norm(norm: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None, bool, float] | None:
    """``(running_mean, running_var, batch_stats, momentum)``: what ``nn.BatchNorm2d.forward`` passes to the kernel
    now, after counting the batch as it does (``num_batches_tracked``); None for another norm.

    ``nn.BatchNorm2d``, ``nn.SyncBatchNorm`` in eval mode (whose statistics are then local) and torchvision's
    ``FrozenBatchNorm2d`` (the detection backbones', timm's ``freeze_batch_norm_2d``: always its running
    statistics) qualify.
    """
    if type(norm) is torchvision.ops.misc.FrozenBatchNorm2d:
        return norm.running_mean, norm.running_var, False, 0.0
    if type(norm) is nn.SyncBatchNorm and norm.training:
        return None  # batch statistics over all processes: not computable from the local z
    if type(norm) not in (nn.BatchNorm2d, nn.SyncBatchNorm) or not norm.affine:
        return None
    batch_stats = norm.training or not norm.track_running_stats
    momentum = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(norm.num_batches_tracked)
    running_used = norm.track_running_stats and (norm.training or not batch_stats)
    running = (norm.running_mean, norm.running_var) if running_used else (None, None)
    return (*running, batch_stats, momentum)


def norm_with_affine(
    norm: nn.Module, z: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """``(norm(z), (mean, a, beta))`` with ``norm(z) == (z - mean) * a + beta`` per channel, or None for another norm.

    In training the batch statistics come from the norm's own kernel (``torch.native_batch_norm``, what
    ``F.batch_norm`` runs on CPU, returns them), with the module's running-statistics update as
    ``nn.BatchNorm2d.forward`` does it; in eval the running statistics are the affine.
    """
    parts = prepare_batch_norm(norm) if z.dim() == 4 else None
    if parts is None:
        return None
    running_mean, running_var, batch_stats, momentum = parts
    if not batch_stats:  # running statistics: the affine map of fixed_norm_affine, as constants
        out = norm(z)
        with torch.no_grad():
            mean, a, beta = fixed_norm_affine(norm)
        return out, (mean, a, beta.detach())
    running = (running_mean, running_var)
    out, mean, invstd = torch.native_batch_norm(z, norm.weight, norm.bias, *running, True, momentum, norm.eps)
    with torch.no_grad():
        a = norm.weight * invstd
    return out, (mean, a, norm.bias.detach())


def per_channel_grad_sums(grad: torch.Tensor, z: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_hw grad, sum_hw grad * (z - mean))`` per sample and channel, ``(N, C)``, in float32 at least.

    On CPU, for contiguous float tensors of one dtype, BatchNorm's own backward reduction computes both in one read of
    ``grad`` and ``z`` with no block-sized temporary: viewed as ``(1, N * C, H, W)``, each sample's channel is a
    "channel" whose bias gradient is the first sum and whose weight gradient, with the mean given and unit ``invstd``,
    is the second.
    """
    n, c, h, w = z.shape
    dtype = torch.promote_types(z.dtype, torch.float32)
    if (
        grad.device.type == "cpu"
        and grad.dtype == z.dtype == dtype
        and grad.is_contiguous()
        and z.is_contiguous()
    ):
        flat = (1, n * c, h, w)
        _, grad_dot, grad_sum = torch.ops.aten.native_batch_norm_backward(
            grad.view(flat), z.view(flat), None, None, None, mean.to(dtype).repeat(n), z.new_ones(n * c),
            True, 0.0, [False, True, True],
        )
        return grad_sum.view(n, c), grad_dot.view(n, c)
    grad_acc = grad.to(dtype)
    grad_sum = grad_acc.sum(dim=(2, 3))
    grad_dot_z = (grad_acc * z.to(dtype)).sum(dim=(2, 3))
    return grad_sum, grad_dot_z - mean.to(dtype) * grad_sum


class ScaleAdd(torch.autograd.Function):
    """``shortcut + out * gate`` keeping ``z`` (``out = (z - mean) * a + beta``) instead of ``out`` for backward.

    Given a :class:`~se_plugins.insert.norm_scale_add.BackwardLink`, the norm's fused backward takes over the
    gradient of ``out``: the backward hands on what it computed and returns none for ``out``.
    """

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
        link: object | None = None,
    ) -> torch.Tensor:
        ctx.save_for_backward(gate, z, mean, a, beta)
        ctx.dtypes = (shortcut.dtype, out.dtype)
        ctx.link = link
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
        link = ctx.link
        grad_shortcut = grad_out = grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_shortcut = grad.to(shortcut_dtype)
        if ctx.needs_input_grad[1] and link is None:
            grad_out = (grad * gate).to(out_dtype)
        if ctx.needs_input_grad[2] or link is not None:
            # sum_hw grad * ((z - mean) * a + beta) = a * sum_hw grad * (z - mean) + beta * sum_hw grad
            grad_sum, grad_dot_centered = per_channel_grad_sums(grad, z, mean)
            dtype = grad_sum.dtype
            grad_gate = a.to(dtype) * grad_dot_centered + beta.to(dtype) * grad_sum
            grad_gate = grad_gate.view(gate.shape).to(gate.dtype)
            if link is not None:
                link.grad, link.gate = grad, gate.detach().view(grad_sum.shape).to(dtype)
                link.grad_sum, link.grad_dot_centered = grad_sum, grad_dot_centered
        return grad_shortcut, grad_out, grad_gate, None, None, None, None, None
