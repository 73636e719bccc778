"""SE's fused add after a batch-statistics BatchNorm, for compiled training (insert/batch_norm_scale_add.py)."""

import copy

import pytest
import timm
import torch
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SqueezeExcite
from se_plugins.insert.batch_norm_scale_add import batch_norm_scale_add, is_exporting, uses_batch_statistics
from se_plugins.insert.fixed_norm_add import pooled_pointwise_conv
from tests.conftest import randomize_norm_stats, rounding_tolerance

_N, _C, _H, _W = 3, 16, 7, 9


def _parts(norm: nn.Module):
    torch.manual_seed(1)
    norm = randomize_norm_stats(norm).double()
    se = SqueezeExcite(_C, reduction=4, init="random").double()
    conv = nn.Conv2d(8, _C, 1, bias=False).double()
    h = (torch.randn(_N, 8, _H, _W, dtype=torch.float64) * 2 + 1).requires_grad_()
    shortcut = torch.randn(_N, _C, _H, _W, dtype=torch.float64, requires_grad=True)
    return norm, se, conv, h, shortcut


def _value_and_grads(norm, se, conv, h, shortcut, fused: bool, narrow: bool):
    """The result and the gradients of a random linear loss, with the fused form or op by op."""
    for t in (h, shortcut, *norm.parameters(), *se.parameters(), *conv.parameters()):
        t.grad = None
    z = conv(h)
    if fused:
        out = batch_norm_scale_add(norm, z, shortcut, se, pooled_pointwise_conv(conv, h, se) if narrow else None)
    else:
        y = norm(z)
        out = torch.addcmul(shortcut, y, se.gate(y))
    (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    tensors = {"h": h, "shortcut": shortcut, "norm.weight": norm.weight, "norm.bias": norm.bias}
    tensors |= {f"se.{n}": p for n, p in se.named_parameters()} | {"conv.weight": conv.weight}
    return out.detach(), {name: t.grad.clone() for name, t in tensors.items()}


@pytest.mark.parametrize("narrow", [False, True], ids=["pool_z", "pool_conv_input"])
@pytest.mark.parametrize(
    "make_norm",
    [
        lambda: nn.BatchNorm2d(_C).train(),
        lambda: nn.BatchNorm2d(_C, momentum=None).train(),  # cumulative moving average
        lambda: nn.BatchNorm2d(_C, track_running_stats=False).eval(),  # batch statistics in eval too
    ],
    ids=["momentum", "cumulative", "untracked"],
)
def test_equals_the_op_by_op_norm_and_scale_add(make_norm, narrow):
    """Values, every gradient (through the statistics, the pool and the excitation) and the running statistics equal
    the norm module followed by the plain scale-add, in float64."""
    norm, se, conv, h, shortcut = _parts(make_norm())
    plain_norm = copy.deepcopy(norm)
    for _ in range(2):  # twice: the running statistics and the cumulative average's count move on
        actual, actual_grads = _value_and_grads(norm, se, conv, h, shortcut, fused=True, narrow=narrow)
        expected, expected_grads = _value_and_grads(plain_norm, se, conv, h, shortcut, fused=False, narrow=narrow)
        # normalised values of size ~1; sums over the batch's N*H*W values (statistics, weight and bias gradients)
        bound = rounding_tolerance(expected, layers=4, fan_in=_N * _H * _W, dtype=torch.float64)
        assert (actual - expected).abs().max().item() <= bound
        for name, g in expected_grads.items():
            bound = rounding_tolerance(g, layers=6, fan_in=_N * _H * _W * 8, dtype=torch.float64)
            assert (actual_grads[name] - g).abs().max().item() <= bound, name
        for (name, a), b in zip(norm.named_buffers(), plain_norm.buffers(), strict=True):
            if a.is_floating_point():  # the batch's mean and variance, summed in another order
                bound = rounding_tolerance(b, layers=4, fan_in=_N * _H * _W, dtype=torch.float64)
                assert (a - b).abs().max().item() <= bound, name
            else:
                assert torch.equal(a, b), name


def test_which_norms():
    assert uses_batch_statistics(nn.BatchNorm2d(8).train())
    assert uses_batch_statistics(nn.BatchNorm2d(8, track_running_stats=False).eval())
    assert not uses_batch_statistics(nn.BatchNorm2d(8).eval())  # running statistics: fixed_norm_add.py
    assert not uses_batch_statistics(nn.SyncBatchNorm(8).train())  # statistics over all processes
    assert not uses_batch_statistics(nn.BatchNorm2d(8, affine=False).train())
    assert not uses_batch_statistics(nn.GroupNorm(2, 8))


def test_half_precision_takes_the_op_by_op_form():
    """Under autocast (a bfloat16 norm input) the norm module runs as it would without SE: same value, same dtype."""
    norm = randomize_norm_stats(nn.BatchNorm2d(8)).train()
    se = SqueezeExcite(8, reduction=4, init="random")
    z, shortcut = torch.randn(2, 8, 5, 5, dtype=torch.bfloat16), torch.randn(2, 8, 5, 5, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = batch_norm_scale_add(copy.deepcopy(norm), z, shortcut, se)
        out = norm(z)
        expected = torch.addcmul(shortcut, out, se.gate(out))
    assert actual.dtype == expected.dtype and torch.equal(actual, expected)


class _GraphRecorder:
    """A torch.compile backend that keeps the graphs dynamo records (and runs them as they are)."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):  # noqa: ANN204
        self.graphs.append(gm)
        return gm.forward


class _ExportProbe(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1 if is_exporting() else x


@pytest.mark.parametrize("strict", [False, True])
def test_is_exporting_only_under_export(strict):
    """True while torch.export traces, False in eager and under torch.compile (where dynamo before torch 2.12
    traced ``torch.compiler.is_exporting()`` as True, and compiled training lost this form)."""
    x = torch.zeros(2)
    assert not is_exporting()
    assert torch.equal(torch.compile(_ExportProbe(), backend="eager", fullgraph=True)(x), x)
    assert torch.equal(torch.export.export(_ExportProbe(), (x,), strict=strict).module()(x), x + 1)


@pytest.mark.slow
def test_compiled_training_step_takes_it_and_matches_eager():
    """se_plugin_resnet50's layer1 compiled for training: dynamo's graph has the batch norm op only for the blocks'
    first two norms (the last one is the fused form), and the compiled step's gradients and running statistics equal
    eager's (where ``norm_scale_add.py`` runs) up to rounding."""
    torch.manual_seed(0)
    layer = randomize_norm_stats(timm.create_model("se_plugin_resnet50", se_init="random").layer1).train()
    recorder = _GraphRecorder()
    torch.compile(copy.deepcopy(layer), backend=recorder, fullgraph=True)(torch.randn(2, 64, 16, 16))
    (graph,) = recorder.graphs
    norms = sum("batch_norm" in str(node.target) for node in graph.graph.nodes)
    assert norms == 1 + 2 * len(layer)  # the downsample's norm and bn1, bn2 of each block

    compiled_layer = torch.compile(copy.deepcopy(layer), fullgraph=True)
    x = torch.randn(2, 64, 16, 16)
    grads = []
    for module in (layer, compiled_layer):
        module.zero_grad(set_to_none=True)
        module(x).square().mean().backward()
        grads.append({n.removeprefix("_orig_mod."): p.grad for n, p in module.named_parameters()})
    eager, compiled = grads
    assert eager.keys() == compiled.keys()
    for name, g in eager.items():
        # up to four roundings apart per block (its convs and norm, the pool, the scale-add); the longest sums are
        # the weight gradients' over N*H*W and the 3x3 convs' over 64 * 9 inputs
        bound = rounding_tolerance(g, layers=4 * len(layer), fan_in=max(2 * 16 * 16, 64 * 9))
        assert (compiled[name] - g).abs().max().item() <= bound, name
    for (name, a), b in zip(layer.named_buffers(), compiled_layer.buffers(), strict=True):
        if a.is_floating_point():  # statistics of the same batch, summed in another order
            assert (a - b).abs().max().item() <= rounding_tolerance(a, layers=4 * len(layer), fan_in=2 * 16 * 16)
        else:
            assert torch.equal(a, b), name
