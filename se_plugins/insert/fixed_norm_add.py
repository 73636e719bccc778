"""The fused SE add of a block whose last norm applies fixed statistics, for compiled graphs.

An eval-mode BatchNorm (and torchvision's ``FrozenBatchNorm2d``, always) is a per-channel affine map,
``out = (z - mean) * a + beta``. So SE's pool of the norm output is the same affine map of the pool of its input,
``mean_hw out = (mean_hw z - mean) * a + beta``, and ``shortcut + out * gate`` can take the affine map inside the
scale-add. Written that way, ``torch.compile`` (inductor) reads ``z`` twice -- once for the pool, once in the
pointwise scale-add-activation kernel -- and never writes the norm output, where pooling the norm output makes it
write that block-sized tensor first (the compiled block without SE fuses norm, add and activation into one kernel).

Where the norm follows a plain 1x1 convolution (a Bottleneck's ``conv3``), the pool moves through it as well:
``mean_hw conv(h) = W @ mean_hw h + b``, so SE pools the convolution's input -- a quarter of the channels in a
Bottleneck, and a tensor the graph has just written -- instead of its output (:func:`pooled_pointwise_conv`).

Values equal the norm-then-scale form up to rounding. Used under ``torch.compile`` / ``torch.export`` only: eager
runs the norm's own kernel (identity SE bit-exact), and TorchScript/FX keep the plain form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def applies_fixed_statistics(norm: nn.Module) -> bool:
    """Whether ``norm`` applies fixed statistics now: ``FrozenBatchNorm2d``, or an affine ``nn.BatchNorm2d`` /
    ``SyncBatchNorm`` in eval mode with running statistics (not batch statistics, not another norm)."""
    if type(norm) is torchvision.ops.misc.FrozenBatchNorm2d:
        return True
    return (
        type(norm) in (nn.BatchNorm2d, nn.SyncBatchNorm)
        and not norm.training
        and norm.track_running_stats
        and norm.affine
    )


def fixed_norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(mean, a, beta)`` per channel with ``norm(z) == (z - mean) * a + beta`` for a norm that
    :func:`applies_fixed_statistics`, else None."""
    if not applies_fixed_statistics(norm):
        return None
    return norm.running_mean, norm.weight * torch.rsqrt(norm.running_var + norm.eps), norm.bias


def pooled_pointwise_conv(conv: nn.Module, h: torch.Tensor, se: nn.Module) -> torch.Tensor | None:
    """SE's pool of ``conv(h)``, ``(N, C_out)``, from the pool of ``h`` where ``conv`` is a plain 1x1 convolution
    with stride 1, no padding and one group (a per-pixel linear map); None for any other convolution."""
    plain = (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.groups == 1
    )
    if not plain:
        return None
    return F.linear(se.squeeze(h), conv.weight.flatten(1), conv.bias)


def fixed_norm_scale_add(
    norm: nn.Module, z: torch.Tensor, shortcut: torch.Tensor, se: nn.Module, pooled_z: torch.Tensor | None = None
) -> torch.Tensor | None:
    """``shortcut + norm(z) * se.gate(norm(z))`` with the norm's affine map taken inside the pool and the scale-add
    (see the module doc), or None where ``norm`` does not apply fixed statistics. ``pooled_z``: SE's pool of ``z``
    where the caller has it from upstream (:func:`pooled_pointwise_conv`); else ``z`` is pooled here."""
    affine = fixed_norm_affine(norm)
    if affine is None or z.dim() != 4:
        return None
    mean, a, beta = affine
    if pooled_z is None:
        pooled_z = se.squeeze(z)
    pooled = (pooled_z - mean) * a + beta
    gate = se.excite(pooled.to(z.dtype))
    # in the input's dtype, as the norm's own output is (half precision under autocast: no float32 block output)
    normed = ((z - mean[:, None, None]) * a[:, None, None] + beta[:, None, None]).to(z.dtype)
    return torch.addcmul(shortcut, normed, gate)
