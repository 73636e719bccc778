"""The forward of a residual block with Squeeze-and-Excitation, shared by every residual block family.

A block gets SE by switching its class to a subclass of its own class and :class:`SEResidualBlock` (so existing
state-dict keys never change and the model stays picklable). The subclass says how its block is built by defining
``residual(x)`` (the branch, up to and including its last norm), ``final_act(x)`` (what follows the add) and, where
they differ from the defaults, ``shortcut(x)`` and ``branch_drop(x)`` / ``drop_path_active()``.

The forward is written for every way a model is run: eager, ``torch.compile`` / ``torch.export``, TorchScript
(``torch.jit.script``) and FX (``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor``, timm's
``feature_cls="fx"``), with grad on or off. No attribute carries a class-level annotation: TorchScript infers the
attribute types from the values.
"""

from typing import Optional

import torch

from . import scale_add
from .batch_norm_scale_add import batch_norm_scale_add, is_exporting, uses_batch_statistics
from .fixed_norm_add import applies_fixed_statistics, fixed_norm_scale_add, pooled_pointwise_conv
from .in_place_norm import fixed_norm_in_place, modules_without_hooks
from .norm_scale_add import norm_scale_add
from .scale_add import ScaleAdd, norm_with_affine

SE_POSITIONS = ("standard", "pre", "post", "identity")


def _can_write_in_place(out: torch.Tensor, shortcut: torch.Tensor, gate: torch.Tensor) -> bool:
    """Whether the fused SE add may overwrite the branch output ``out`` (eager or TorchScript, autograd off).

    Under FX, torch.jit tracing, torch.compile and torch.export the functional form is recorded instead: a traced
    or compiled graph must stay valid when it runs with autograd on, and inductor fuses the functional form anyway;
    so it is under ``torch.func`` transforms (``vmap``), which have no batching rule for ``out=`` ops.
    """
    if torch.jit.is_scripting():
        return not torch.is_grad_enabled() and out.dtype == shortcut.dtype and out.dtype == gate.dtype
    else:
        if isinstance(out, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        if torch._C._functorch.is_functorch_wrapped_tensor(out):  # torch.func.vmap & co.: no out= batching rules
            return False
        return not torch.is_grad_enabled() and out.dtype == shortcut.dtype == gate.dtype


class EndsInConv3:
    """Mixin for a block whose residual branch ends with ``conv3`` (1x1), then its last norm: names ``last_conv`` and
    builds ``residual_before_norm`` from the block's ``residual_before_last_conv``. List it before the SE class."""

    last_conv = "conv3"

    def residual_before_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.residual_before_last_conv(x))


class SEResidualBlock:
    """Mixin: the forward of a residual block with SE at ``se_position`` (the paper's integration designs, Fig. 5).

    - ``standard``: on the residual branch after its last norm, before the add (SE-ResNet).
    - ``pre``: on the residual branch's input (SE-PRE); the shortcut sees the unscaled input.
    - ``post``: after the add and the final activation (SE-POST).
    - ``identity``: on the shortcut, in parallel to the residual branch (SE-Identity).

    With ``se_fused`` (default) the standard position folds the channel scale into the residual add
    (``shortcut + branch * gate`` in one ``addcmul``), so the scaled branch is never materialised; with autograd off
    (eager or TorchScript) the result is written into the branch output, as timm's ``x += shortcut`` does.

    In eager training, blocks that name their last norm (``last_norm = "bn3"``, with ``residual_before_norm(x)``
    the branch up to it) differentiate that norm, SE's pool and the scale-add as one
    (:func:`~se_plugins.insert.norm_scale_add.norm_scale_add`: float32/float64; half precision uses
    :class:`~se_plugins.insert.scale_add.ScaleAdd` after the norm), keeping the norm's input instead of its output
    for backward: SE then costs no activation memory beyond its gate vectors, and its backward writes no
    block-sized tensor the block without SE does not write. Small blocks (fewer than ``FUSED_MIN_ELEMENTS`` /
    ``SCALE_ADD_MIN_ELEMENTS`` norm inputs) keep the simpler forms, whose fixed per-call cost is lower.

    Under ``torch.compile`` / ``torch.export``, a last norm with fixed statistics (eval mode, frozen) is folded into
    SE's pool and the scale-add (:mod:`~se_plugins.insert.fixed_norm_add`), and in compiled training a
    batch-statistics BatchNorm, the pool and the scale-add get a closed-form backward
    (:mod:`~se_plugins.insert.batch_norm_scale_add`); blocks whose norm follows a 1x1 convolution name it too
    (``last_conv = "conv3"``, with ``residual_before_last_conv(x)`` its input), and SE then pools that convolution's
    narrower input.

    The instance attributes ``se`` (a :class:`~se_plugins.SqueezeExcite`), ``se_position`` and ``se_fused`` are set
    by :func:`se_plugins.add_se`.
    """

    def residual(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - defined by each block class
        raise NotImplementedError

    def final_act(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - defined by each block class
        raise NotImplementedError

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The block's shortcut path (default: ``downsample`` when the block has one)."""
        if self.downsample is None:
            return x
        return self.downsample(x)

    def branch_drop(self, x: torch.Tensor) -> torch.Tensor:
        """Stochastic depth on the residual branch (default: none)."""
        return x

    def drop_path_active(self) -> bool:
        """Whether ``branch_drop`` changes its input now (then the scale cannot be folded into the add)."""
        return False

    def residual_before_norm(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - blocks with last_norm
        """The residual branch up to (not including) the norm named by ``last_norm``."""
        raise NotImplementedError

    def residual_before_last_conv(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - blocks with last_conv
        """The residual branch up to (not including) the convolution named by ``last_conv``."""
        raise NotImplementedError

    @torch.jit.unused
    def _fused_add_in_training(self, x: torch.Tensor, shortcut: torch.Tensor) -> Optional[torch.Tensor]:  # noqa: UP045 (TorchScript reads it)
        """``shortcut + residual(x) * gate`` for eager training, saving memory where it can; None elsewhere."""
        norm_name = getattr(type(self), "last_norm", None)
        if norm_name is None or not torch.is_grad_enabled() or isinstance(x, torch.fx.Proxy):
            return None
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None
        norm = getattr(self, norm_name)
        z = self.residual_before_norm(x)
        fused = norm_scale_add(norm, z, shortcut, self.se)
        if fused is not None:
            return fused
        normed = norm_with_affine(norm, z) if z.numel() >= scale_add.SCALE_ADD_MIN_ELEMENTS else None
        if normed is None:
            out = norm(z)
            return torch.addcmul(shortcut, out, self.se.gate(out))
        out, affine = normed
        return ScaleAdd.apply(shortcut, out, self.se.gate(out), z, *affine)

    @torch.jit.unused
    def _fused_add_in_inference(self, x: torch.Tensor, shortcut: torch.Tensor) -> Optional[torch.Tensor]:  # noqa: UP045 (TorchScript reads it)
        """``shortcut + residual(x) * gate`` for eager inference on CPU with the last norm written into its input
        (``in_place_norm.py``), then the scale-add into that buffer; None elsewhere."""
        norm_name = getattr(type(self), "last_norm", None)
        if norm_name is None or torch.is_grad_enabled() or isinstance(x, torch.fx.Proxy):
            return None
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or x.device.type != "cpu":
            return None
        if not modules_without_hooks(self):
            return None
        norm = getattr(self, norm_name)
        z = self.residual_before_norm(x)
        out = fixed_norm_in_place(norm, z)
        if out is None:
            out = norm(z)
        return self._scale_add(out, shortcut)

    def _scale_add(self, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """The fused ``shortcut + out * gate(out)``, written into ``out`` where that is safe (autograd off, eager or
        TorchScript: :func:`_can_write_in_place`)."""
        gate = self.se.gate(out)
        if _can_write_in_place(out, shortcut, gate):
            return torch.addcmul(shortcut, out, gate, out=out)
        return torch.addcmul(shortcut, out, gate)

    @torch.jit.unused
    def _norm_add_compiled(self, x: torch.Tensor, shortcut: torch.Tensor) -> Optional[torch.Tensor]:  # noqa: UP045 (TorchScript reads it)
        """``shortcut + residual(x) * gate`` under ``torch.compile`` / ``torch.export`` with the last norm folded in:
        fixed statistics (``fixed_norm_add.py``), or, compiling (not exporting), a batch-statistics BatchNorm
        (``batch_norm_scale_add.py``); SE pools ``last_conv``'s input where the block names one. None elsewhere."""
        norm_name = getattr(type(self), "last_norm", None)
        if norm_name is None or not torch.compiler.is_compiling() or isinstance(x, torch.fx.Proxy):
            return None
        norm = getattr(self, norm_name)
        fixed = applies_fixed_statistics(norm)
        if not fixed and (is_exporting() or not uses_batch_statistics(norm)):
            return None
        conv_name = getattr(type(self), "last_conv", None)
        if conv_name is None:
            z, pooled_z = self.residual_before_norm(x), None
        else:
            conv = getattr(self, conv_name)
            h = self.residual_before_last_conv(x)
            z, pooled_z = conv(h), pooled_pointwise_conv(conv, h, self.se)
        if fixed:
            return fixed_norm_scale_add(norm, z, shortcut, self.se, pooled_z)
        return batch_norm_scale_add(norm, z, shortcut, self.se, pooled_z)

    @torch.jit.unused
    def _fused_add(self, x: torch.Tensor, shortcut: torch.Tensor) -> Optional[torch.Tensor]:  # noqa: UP045 (TorchScript reads it)
        """The standard position's ``shortcut + residual(x) * gate`` where a special form applies (eager training,
        eager CPU inference, compiled or exported), else None: the forward then runs the plain fused add."""
        added = self._fused_add_in_training(x, shortcut)
        if added is None:
            added = self._fused_add_in_inference(x, shortcut)
        if added is None:
            added = self._norm_add_compiled(x, shortcut)
        return added

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        if self.se_position == "standard" and self.se_fused and not self.drop_path_active():
            if not torch.jit.is_scripting():
                added = self._fused_add(x, shortcut)
                if added is not None:
                    return self.final_act(added)
        if self.se_position == "pre":
            x = self.se(x)
        out = self.residual(x)
        if self.se_position == "standard":
            if self.se_fused and not self.drop_path_active():
                return self.final_act(self._scale_add(out, shortcut))
            out = self.se(out)
        elif self.se_position == "identity":
            shortcut = self.se(shortcut)
        out = self.final_act(self.branch_drop(out) + shortcut)
        if self.se_position == "post":
            out = self.se(out)
        return out
