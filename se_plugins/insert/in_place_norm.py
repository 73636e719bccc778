"""An SE block's last norm applied in place on its input, for eager inference on CPU.

In eager inference a block's last norm writes its output into a new block-sized buffer. On CPU a fresh buffer can
cost page faults: in a process that only runs inference, glibc's malloc keeps handing the largest tensors pages the
kernel maps on first touch (a resnet50 forward at batch 8, 224^2: ~62 000 minor faults, all in the convolutions' and
norms' output writes, about ten 25.7 MB tensors' worth; the SE model before this: ~70 000), which cost most at two
threads. Written into the convolution output it normalises -- which nothing else holds in inference
once the block's submodules have no hooks -- the norm allocates nothing (that SE model: ~46 000 faults). Where the
heap is warm (no faults, as after a training step), it saves a buffer's first write. The kernel, and so the values,
are the norm's own: identity SE stays bit-exact.

Applies to ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` in eval mode with running statistics (the norm's CPU kernel,
``native_batch_norm``, with its output set to its input) and to torchvision's ``FrozenBatchNorm2d`` (its own
``x * scale + bias``, as two in-place ops), in float32/float64, on CPU, with autograd off, for a plain tensor (not a
subclass, not inside a ``torch.func`` transform). On GPU the caching allocator reuses buffers without faults (and
BatchNorm runs cuDNN's kernel, not this one).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .fixed_norm_add import applies_fixed_statistics

_DTYPES = (torch.float32, torch.float64)


def modules_without_hooks(block: nn.Module) -> bool:
    """Whether no forward (pre-)hook sees ``block``'s submodules' inputs or outputs, neither theirs nor a global one:
    then the block's intermediate tensors are its own, and the norm may be run without its module call."""
    module = torch.nn.modules.module
    if module._global_forward_hooks or module._global_forward_pre_hooks:
        return False
    return not _submodule_hooked(block)


def _submodule_hooked(module: nn.Module) -> bool:
    # a plain recursion over ``_modules``: about half the time of iterating ``modules()`` (~5 us per Bottleneck)
    for child in module._modules.values():
        if child is not None and (child._forward_hooks or child._forward_pre_hooks or _submodule_hooked(child)):
            return True
    return False


def fixed_norm_in_place(norm: nn.Module, z: torch.Tensor) -> torch.Tensor | None:
    """``norm(z)`` written into ``z`` (returned), bit-identical to the module's forward, for a fixed-statistics norm
    on a float32/float64 CPU tensor of its own (not a view) with autograd off; None where that does not hold."""
    if torch.is_grad_enabled() or z.device.type != "cpu" or z.dtype not in _DTYPES or z.dim() != 4 or z._is_view():
        return None
    if type(z) is not torch.Tensor or z.layout != torch.strided or torch._C._functorch.is_functorch_wrapped_tensor(z):
        return None  # a tensor subclass, an MKL-DNN tensor, or inside torch.func.vmap & co. (no out= batching rules)
    if not applies_fixed_statistics(norm):
        return None
    if type(norm) is torchvision.ops.misc.FrozenBatchNorm2d:
        # torchvision's forward, term by term: x * scale + bias
        scale = norm.weight.reshape(1, -1, 1, 1) * (norm.running_var.reshape(1, -1, 1, 1) + norm.eps).rsqrt()
        bias = norm.bias.reshape(1, -1, 1, 1) - norm.running_mean.reshape(1, -1, 1, 1) * scale
        if scale.dtype != z.dtype:
            return None
        return z.mul_(scale).add_(bias)
    if norm.running_mean is None or norm.weight.dtype != z.dtype:
        return None
    empty = z.new_empty(0)
    args = (z, norm.weight, norm.bias, norm.running_mean, norm.running_var, False, 0.0, norm.eps)
    return torch.ops.aten.native_batch_norm.out(*args, out=z, save_mean=empty, save_invstd=z.new_empty(0))[0]
