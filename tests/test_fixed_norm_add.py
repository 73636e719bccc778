"""The fused SE add with a fixed-statistics norm folded in, for compiled graphs (insert/fixed_norm_add.py)."""

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SqueezeExcite, add_se
from se_plugins.insert.fixed_norm_add import fixed_norm_affine, fixed_norm_scale_add, pooled_pointwise_conv
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


def test_the_pool_through_a_pointwise_conv():
    """SE's pool of a 1x1 convolution's output equals the convolution (a linear map) of the pool of its input."""
    torch.manual_seed(0)
    se = SqueezeExcite(24, reduction=4)
    conv = nn.Conv2d(8, 24, 1, bias=True).double()
    h = torch.randn(3, 8, 7, 9, dtype=torch.float64) * 2 + 1
    expected = se.squeeze(conv(h))
    # the sum over H*W and the sum over the 8 input channels, in the other order
    bound = rounding_tolerance(expected, layers=2, fan_in=7 * 9 * 8, dtype=torch.float64)
    assert (pooled_pointwise_conv(conv, h, se) - expected).abs().max().item() <= bound


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(8, 24, 3, padding=1),  # a 3x3: its border terms see the zero padding
        nn.Conv2d(8, 24, 1, stride=2),  # strided: samples a subset of the pixels
        nn.Conv2d(8, 24, 1, padding=1),  # padded: the border pixels are its bias alone
        nn.Conv2d(8, 24, 1, groups=2),
        timm.layers.StdConv2d(8, 24, 1),  # a subclass with its own forward (standardised weights)
    ],
    ids=["3x3", "strided", "padded", "grouped", "subclass"],
)
def test_the_pool_stays_after_any_other_conv(conv):
    assert pooled_pointwise_conv(conv, torch.ones(1, 8, 4, 4), SqueezeExcite(24)) is None


def _bottleneck_blocks():
    """One stride-1 block with identity shortcut per family whose last norm follows a 1x1 conv (name, factory)."""

    def first(model_name, kind):
        model = timm.create_model(model_name, se_init="random")
        return next(m for m in model.modules() if isinstance(m, kind) and m.conv1.in_channels == m.conv3.out_channels)

    from se_plugins.insert import timm_dla, timm_res2net, timm_resnet

    return {
        "timm_resnet": lambda: first("se_plugin_resnet50", timm_resnet.SETimmBottleneck),
        "torchvision_resnet": lambda: add_se(torchvision.models.resnet50(), init="random").layer1[1],
        "res2net": lambda: first("se_plugin_res2net50_26w_4s", timm_res2net.SETimmBottle2neck),
        "dla": lambda: first("se_plugin_dla60", timm_dla.SETimmDlaBottleneck),
        "dla_res2net": lambda: first("se_plugin_dla60_res2net", timm_dla.SETimmDlaBottle2neck),
    }


@pytest.mark.parametrize("family", list(_bottleneck_blocks()))
def test_the_exported_bottleneck_pools_the_last_conv_input(family):
    """Exported in eval mode, a Bottleneck-style block has no op for its last norm, and SE's pool (the only sum over
    H and W) reads the last 1x1 convolution's input (its narrower channels); values equal eager."""
    torch.manual_seed(0)
    block = randomize_norm_stats(_bottleneck_blocks()[family]()).eval()
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    exported = torch.export.export(block, (x,)).module()
    assert _batch_norms(exported) == _batch_norms(torch.export.export(block.train(), (x,)).module()) - 1
    block.eval()
    pools = [n for n in exported.graph.nodes if n.target == torch.ops.aten.sum.dim_IntList and n.args[1] == [2, 3]]
    assert [n.args[0].meta["val"].shape[1] for n in pools] == [block.conv3.in_channels]
    assert block.conv3.in_channels < block.conv3.out_channels
    with torch.no_grad():
        expected = block(x)
        actual = exported(x)
    # the pool over 64 pixels, then the 1x1 conv's sum over its input channels, in the other order than eager's
    bound = rounding_tolerance(expected, layers=4, fan_in=64 * block.conv3.in_channels)
    assert (actual - expected).abs().max().item() <= bound


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_compiled_frozen_norm_training_step_matches_eager(arch):
    """A detection backbone's blocks (FrozenBatchNorm2d) fine-tuned under torch.compile: the folded form's
    gradients (ResNet-50: through the pool of conv3's input too) equal eager's (the norm's own forward) up to
    rounding."""
    torch.manual_seed(0)
    model = add_se(getattr(torchvision.models, arch)(num_classes=4, norm_layer=_FROZEN), init="random")
    layer = randomize_norm_stats(model.layer2).train()
    compiled_layer = torch.compile(copy.deepcopy(layer))
    x = torch.randn(2, model.layer2[0].conv1.in_channels, 16, 16)
    grads = []
    for module in (layer, compiled_layer):
        module.zero_grad(set_to_none=True)
        module(x).square().mean().backward()
        grads.append({n: p.grad for n, p in module.named_parameters()})
    eager, compiled = grads
    assert eager.keys() == {n.removeprefix("_orig_mod.") for n in compiled}
    for name, g in eager.items():
        # up to four roundings apart per block (its convs and norm, the pool, the scale-add); the longest sums are
        # the weight gradients' over N*H*W and the 3x3 convs' over 128 * 9 inputs
        bound = rounding_tolerance(g, layers=4 * len(layer), fan_in=max(2 * 16 * 16, 128 * 9))
        assert (compiled[f"_orig_mod.{name}"] - g).abs().max().item() <= bound, name
