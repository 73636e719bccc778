"""The block's last BatchNorm and SE's fused add, differentiated as one: ``shortcut + bn(z) * gate(mean_hw bn(z))``.

In eager float training the branch end of a residual block with SE is ``y = bn(z)``, the pooled ``p = mean_hw y``,
the gate ``g = G(p)`` (SE's small MLP, autograd as usual) and ``shortcut + y * g``. Differentiated op by op, the
backward writes three block-sized tensors the block without SE never writes: ``grad * g`` (the norm output's
gradient), the product for the gate's gradient ``sum_hw grad * y``, and the sum of the first with the pool's
broadcast gradient. Here the norm and the pool are one autograd node (:class:`NormPool`) and the scale-add another
(:class:`~se_plugins.insert.scale_add.ScaleAdd`, given a :class:`BackwardLink`). With ``S1 = sum_hw grad`` and
``S2 = sum_hw grad * (z - mu)`` per sample and channel (one read of ``grad`` and ``z``, no block-sized result),
everything follows in closed form, per channel ``a = weight * invstd``:

- gate: ``dL/dg = a * S2 + beta * S1`` (``ScaleAdd``'s backward, which hands ``grad, g, S1, S2`` on);
- norm weight and bias: ``dL/dweight = invstd * sum_n(g * S2 + P * (zbar - mu))``, ``dL/dbias = sum_n(g * S1 + P)``,
  with ``P = dL/dp`` from the gate's backward and ``zbar = mean_hw z``;
- norm input: ``dL/dz = a * (g * grad + P / HW) - a / M * dL/dbias - a * invstd^2 / M * dL/dweight * (z - mu)``
  with batch statistics (``M = N * H * W``), ``a * (g * grad + P / HW)`` with running ones: one block-sized
  result, as the norm's own backward writes.

``ScaleAdd``'s backward runs first (autograd runs a node after all users of its outputs), so it fills the link and
returns no gradient for the norm output; ``NormPool``'s backward reads it. The pool is taken from ``z``
(``a * (zbar - mu) + beta``: the norm output's mean up to rounding, one read of ``z`` instead of ``y``). The
forward is unchanged otherwise: with batch statistics the norm's own kernel (``torch.native_batch_norm``, running
statistics updated as ``nn.BatchNorm2d`` does), with running ones (eval, the detection backbones'
``FrozenBatchNorm2d``) the norm module itself, so an identity-initialised SE leaves the output bit-for-bit the
same. Gradients equal the op-by-op ones up to rounding (tested in float64, every norm mode). Float32 and float64
only; half precision (autocast) keeps the op-by-op norm (see ``scale_add.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from .scale_add import ScaleAdd, prepare_batch_norm

FUSED_DTYPES = (torch.float32, torch.float64)
# Below this many elements of ``z`` the fused form's extra per-channel ops (and its second autograd node) cost more
# than the block-sized passes it saves: the crossover measured on a 2-core AMD EPYC (one SE block's forward +
# backward, 1 thread: 2x64x32x32 +6 %, 2x128x32x32 even, 2x256x32x32 -24 %, 8x256x56x56 -25 %). Smaller blocks use
# ``ScaleAdd`` after the norm's own autograd.
FUSED_MIN_ELEMENTS = 2**18


class BackwardLink:
    """What ``ScaleAdd``'s backward hands to ``NormPool``'s backward: the result's gradient, the gate, S1 and S2."""

    __slots__ = ("grad", "gate", "grad_sum", "grad_dot_centered")

    def __init__(self) -> None:
        self.grad = self.gate = self.grad_sum = self.grad_dot_centered = None

    def take(self) -> tuple[torch.Tensor | None, ...]:
        """The handed-on tensors, releasing them (the result's gradient may then be reused in place by autograd)."""
        taken = (self.grad, self.gate, self.grad_sum, self.grad_dot_centered)
        self.grad = self.gate = self.grad_sum = self.grad_dot_centered = None
        return taken


class NormPool(torch.autograd.Function):
    """``(bn(z), mean_hw bn(z), mean, a)`` whose backward also does the scale-add's part for ``z`` (module doc).

    ``mean`` and ``a = weight * invstd`` (the per-channel affine, batch or running statistics) are not differentiable:
    the scale-add uses them to compute the gate's gradient.
    """

    @staticmethod
    def forward(  # noqa: PLR0913
        ctx,  # noqa: ANN001
        z: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        norm: nn.Module,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        batch_stats: bool,
        momentum: float,
        link: BackwardLink,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if batch_stats:
            running = (running_mean, running_var)
            out, mean, invstd = torch.native_batch_norm(z, weight, bias, *running, True, momentum, norm.eps)
        else:  # the running statistics are the affine; the norm's own forward, so its output is exactly the same
            out = norm(z)
            mean, invstd = running_mean, torch.rsqrt(running_var + norm.eps)
        a = weight * invstd
        z_centered_mean = z.sum((2, 3), dtype=mean.dtype) / (z.shape[2] * z.shape[3]) - mean
        pooled = torch.addcmul(bias, z_centered_mean, a)
        ctx.save_for_backward(z, weight, mean, invstd, z_centered_mean)
        ctx.batch_stats = batch_stats
        ctx.link = link
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(mean, a)
        return out, pooled, mean, a

    @staticmethod
    def backward(ctx, grad_out, grad_pooled, _grad_mean, _grad_a):  # noqa: ANN001, ANN205
        if grad_out is not None:
            raise RuntimeError("NormPool: its norm output is for ScaleAdd only, whose backward hands on its gradient")
        z, weight, mean, invstd, z_centered_mean = ctx.saved_tensors
        grad, gate, grad_sum, grad_dot_centered = ctx.link.take()
        n, c, h, w = z.shape
        if grad is None:
            raise RuntimeError("NormPool: backward without the scale-add's: the gate feeds only the scale-add")
        pooled_grad = z_centered_mean.new_zeros(n, c) if grad_pooled is None else grad_pooled
        batch_terms = ctx.batch_stats and ctx.needs_input_grad[0]  # the input gradient needs both sums below
        grad_weight = grad_bias = grad_z = None
        if ctx.needs_input_grad[2] or batch_terms:
            grad_bias = (gate * grad_sum + pooled_grad).sum(0)
        if ctx.needs_input_grad[1] or batch_terms:
            grad_weight = invstd * (gate * grad_dot_centered + pooled_grad * z_centered_mean).sum(0)
        if ctx.needs_input_grad[0]:
            a = weight.detach() * invstd
            offset = a * pooled_grad / (h * w)  # per sample and channel
            if ctx.batch_stats:
                count = n * h * w
                slope = -a * invstd * grad_weight / count  # per channel, times (z - mean)
                offset = offset - a * grad_bias / count - slope * mean
            grad_z = torch.addcmul(offset.view(n, c, 1, 1), grad, (a * gate).view(n, c, 1, 1))
            if ctx.batch_stats:
                grad_z.addcmul_(z, slope.view(1, c, 1, 1))
        if not ctx.needs_input_grad[1]:
            grad_weight = None
        if not ctx.needs_input_grad[2]:
            grad_bias = None
        return grad_z, grad_weight, grad_bias, None, None, None, None, None, None, None


def norm_scale_add(norm: nn.Module, z: torch.Tensor, shortcut: torch.Tensor, se: nn.Module) -> torch.Tensor | None:
    """``shortcut + norm(z) * se.excite(mean_hw norm(z))`` with the fused backward above, or None where it does not
    apply: ``nn.BatchNorm2d`` (``SyncBatchNorm`` in eval, torchvision's ``FrozenBatchNorm2d``) of the
    input's dtype, float32/float64 4-d input and shortcut of that dtype, at least ``FUSED_MIN_ELEMENTS`` of it.
    """
    if z.dtype not in FUSED_DTYPES or z.dim() != 4 or shortcut.dtype != z.dtype:  # noqa: PLR2004 (N, C, H, W)
        return None
    if z.numel() < FUSED_MIN_ELEMENTS:
        return None
    if getattr(norm, "weight", None) is None or norm.weight.dtype != z.dtype:
        return None
    parts = prepare_batch_norm(norm)
    if parts is None:
        return None
    link = BackwardLink()
    out, pooled, mean, a = NormPool.apply(z, norm.weight, norm.bias, norm, *parts, link)
    gate = se.excite(pooled)
    return ScaleAdd.apply(shortcut, out, gate, z, mean, a, norm.bias.detach(), link)
