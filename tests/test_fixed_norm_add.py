"""The fused SE add with a fixed-statistics norm folded in, for compiled graphs (insert/fixed_norm_add.py)."""

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SqueezeExcite, add_se
from se_plugins.insert.fixed_norm_add import fixed_norm_affine, fixed_norm_scale_add
from tests.conftest import randomize_norm_stats, rounding_tolerance

_FROZEN = torchvision.ops.misc.FrozenBatchNorm2d


def _norm(kind: str) -> nn.Module:
    norm = {"eval": nn.BatchNorm2d(16).eval(), "frozen": _FROZEN(16)}[kind]
    return randomize_norm_stats(norm).double()


@pytest.mark.parametrize("kind", ["eval", "frozen"])
def test_equals_the_norm_then_the_scale_add(kind):
    norm = _norm(kind)
    torch.manual_seed(1)
    se = SqueezeExcite(16, reduction=4, init="random").double()
    z = torch.randn(3, 16, 7, 9, dtype=torch.float64) * 3 + 1
    shortcut = torch.randn(3, 16, 7, 9, dtype=torch.float64)
    out = norm(z)
    expected = torch.addcmul(shortcut, out, se.gate(out))
    actual = fixed_norm_scale_add(norm, z, shortcut, se)
    # the affine map before / after the pool's sum of H*W terms and inside the scale-add: a few roundings apart
    assert (actual - expected).abs().max().item() <= rounding_tolerance(expected, layers=4, fan_in=7 * 9,
                                                                       dtype=torch.float64)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_keeps_its_dtype(dtype):
    """Under autocast the norm's output has its input's dtype (float32 statistics); so does the folded form's."""
    norm = randomize_norm_stats(nn.BatchNorm2d(16).eval())
    se = SqueezeExcite(16, reduction=4, init="random")
    z, shortcut = torch.randn(2, 16, 5, 5, dtype=dtype), torch.randn(2, 16, 5, 5, dtype=dtype)
    with torch.autocast("cpu", dtype=dtype):
        out = norm(z)
        expected = torch.addcmul(shortcut, out, se.gate(out))
        actual = fixed_norm_scale_add(norm, z, shortcut, se)
    assert actual.dtype == expected.dtype == dtype
    # the half-precision roundings of the norm output, the gate and the add, relative to the output's size
    assert (actual.float() - expected.float()).abs().max().item() <= 8 * torch.finfo(dtype).eps * max(
        1.0, expected.float().abs().max().item()
    )


def test_only_for_fixed_statistics():
    assert fixed_norm_affine(nn.BatchNorm2d(8).train()) is None  # batch statistics
    assert fixed_norm_affine(nn.BatchNorm2d(8, track_running_stats=False).eval()) is None
    assert fixed_norm_affine(nn.SyncBatchNorm(8).train()) is None
    assert fixed_norm_affine(nn.BatchNorm2d(8, affine=False).eval()) is None
    assert fixed_norm_affine(nn.GroupNorm(2, 8)) is None
    assert fixed_norm_affine(nn.SyncBatchNorm(8).eval()) is not None
    assert fixed_norm_scale_add(nn.BatchNorm2d(8).train(), torch.ones(1, 8, 2, 2), torch.ones(1, 8, 2, 2), None) is None


def _batch_norms(graph_module: torch.fx.GraphModule) -> int:
    return sum("batch_norm" in str(node.target) for node in graph_module.graph.nodes)


def test_the_exported_graph_folds_the_last_norm():
    """The graph torch.export (and torch.compile) records has no batch-norm op for the block's last norm when it
    applies running statistics: its affine map sits inside the pool and the scale-add; with batch statistics the
    norm stays."""
    torch.manual_seed(0)
    block = randomize_norm_stats(timm.create_model("se_plugin_resnet50", se_init="random").layer1[1])
    base = randomize_norm_stats(timm.create_model("resnet50").layer1[1])
    x = torch.randn(2, 256, 8, 8)
    exported = torch.export.export(block.eval(), (x,))
    assert _batch_norms(exported.module()) == 2 == _batch_norms(torch.export.export(base.eval(), (x,)).module()) - 1
    with torch.no_grad():
        expected = block(x)
        assert (exported.module()(x) - expected).abs().max() <= rounding_tolerance(expected, layers=4, fan_in=64)
    assert _batch_norms(torch.export.export(block.train(), (x,)).module()) == 3


@pytest.mark.slow
def test_compiled_frozen_norm_training_step_matches_eager():
    """A detection backbone's blocks (FrozenBatchNorm2d) fine-tuned under torch.compile: the folded form's
    gradients equal eager's (which runs the norm's own forward) up to rounding."""
    torch.manual_seed(0)
    model = add_se(torchvision.models.resnet18(num_classes=4, norm_layer=_FROZEN), init="random")
    layer = randomize_norm_stats(model.layer2).train()
    compiled_layer = torch.compile(copy.deepcopy(layer))
    x = torch.randn(2, 64, 16, 16)
    grads = []
    for module in (layer, compiled_layer):
        module.zero_grad(set_to_none=True)
        module(x).square().mean().backward()
        grads.append({n: p.grad for n, p in module.named_parameters()})
    eager, compiled = grads
    assert eager.keys() == {n.removeprefix("_orig_mod.") for n in compiled}
    for name, g in eager.items():
        bound = rounding_tolerance(g, layers=8, fan_in=2 * 16 * 16)  # a layer of two blocks, batch sums over N*H*W
        assert (compiled[f"_orig_mod.{name}"] - g).abs().max().item() <= bound, name
