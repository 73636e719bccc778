"""The memory-saving fused SE add in training (insert/scale_add.py): same gradients, no kept branch output."""

import copy
import math

import pytest
import timm
import torch
import torchvision
from timm.models.res2net import Bottle2neck
from timm.models.resnet import ResNet
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, se_modules, set_se_fused
from se_plugins.insert import norm_scale_add as norm_scale_add_module
from se_plugins.insert import scale_add as scale_add_module
from se_plugins.insert.scale_add import ScaleAdd, norm_with_affine
from tests.conftest import randomize_norm_stats


def _close(actual: torch.Tensor, expected: torch.Tensor, ops: int) -> bool:
    """Equal up to ``ops`` roundings of sums of up to ``fan_in`` terms, relative to the tensor's size."""
    eps = torch.finfo(expected.dtype).eps
    fan_in = max(expected.numel(), 1)
    return (actual - expected).abs().max().item() <= ops * math.sqrt(fan_in) * eps * expected.abs().max().item()


def _bn(channels: int, training: bool) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels).train(training)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def _addcmul(bn, shortcut, z, gate):
    return torch.addcmul(shortcut, bn(z), gate)


def _scale_add(bn, shortcut, z, gate):
    out, affine = norm_with_affine(bn, z)
    return ScaleAdd.apply(shortcut, out, gate, z, *affine)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_scale_add_equals_addcmul_after_batchnorm(training, momentum):
    bn = _bn(16, training)
    bn.momentum = momentum
    torch.manual_seed(1)
    z = (torch.randn(4, 16, 6, 6) * 3 + 1).requires_grad_()
    shortcut = torch.randn(4, 16, 6, 6, requires_grad=True)
    gate = torch.rand(4, 16, 1, 1, requires_grad=True)
    weight = torch.randn(4, 16, 6, 6)
    state = copy.deepcopy(bn.state_dict())

    def run(add):
        bn.load_state_dict(state)
        for t in (z, shortcut, gate, bn.weight, bn.bias):
            t.grad = None
        y = add(bn, shortcut, z, gate)
        y = add(bn, y, z, gate)  # twice: the running statistics' update (momentum) matters from the second on
        (y * weight).sum().backward()
        return y.detach(), [t.grad.clone() for t in (z, shortcut, gate, bn.weight, bn.bias)], bn.state_dict()

    y_ref, grads_ref, state_ref = run(_addcmul)
    y, grads, state_after = run(_scale_add)
    assert torch.equal(y, y_ref)  # on CPU BatchNorm2d runs the same native_batch_norm kernel: the same forward
    for key, value in state_ref.items():  # running statistics updated as nn.BatchNorm2d does
        assert torch.equal(state_after[key], value), key
    for actual, expected in zip(grads, grads_ref, strict=True):
        assert _close(actual, expected, ops=8)


def test_result_written_into_the_norm_output():
    """Like the block without SE (``x += shortcut``), the result reuses the norm output's memory when the dtypes
    agree; the gradients still see the norm output's original values (checked above)."""
    bn = _bn(8, True)
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    shortcut, gate = torch.randn(2, 8, 4, 4), torch.rand(2, 8, 1, 1, requires_grad=True)
    out, affine = norm_with_affine(bn, z)
    expected = torch.addcmul(shortcut, out.detach(), gate.detach())
    y = ScaleAdd.apply(shortcut, out, gate, z, *affine)
    assert y.data_ptr() == out.data_ptr() and torch.equal(y, expected)
    out, affine = norm_with_affine(bn, z)
    y = ScaleAdd.apply(shortcut.double(), out, gate, z, *affine)  # promoted: a new tensor
    assert y.dtype == torch.float64 and y.data_ptr() != out.data_ptr()


def test_norm_with_affine_covers_batchnorm_only():
    z = torch.randn(2, 4, 3, 3)
    assert norm_with_affine(nn.GroupNorm(2, 4), z) is None
    assert norm_with_affine(nn.SyncBatchNorm(4).train(), z) is None  # statistics over all processes
    assert norm_with_affine(nn.BatchNorm2d(4, affine=False), z) is None
    frozen = torchvision.ops.misc.FrozenBatchNorm2d(4)  # detection backbones; timm's freeze_batch_norm_2d's too
    for bn in [_bn(4, training=True), _bn(4, training=False), frozen]:
        if bn is frozen:
            with torch.no_grad():
                bn.weight.uniform_(0.5, 2.0), bn.bias.uniform_(-1, 1), bn.running_mean.uniform_(-1, 1)
        out, (mean, a, beta) = norm_with_affine(bn, z)
        shape = (1, -1, 1, 1)
        rebuilt = (z - mean.view(shape)) * a.view(shape) + beta.view(shape)
        assert _close(rebuilt, out.detach(), ops=4)


@pytest.fixture(autouse=True)
def _scale_add_at_every_size(monkeypatch):
    """The tests' small blocks take ScaleAdd too (by default only blocks of SCALE_ADD_MIN_ELEMENTS do)."""
    monkeypatch.setattr(scale_add_module, "SCALE_ADD_MIN_ELEMENTS", 0)


_MODELS = {
    "timm_bottleneck": lambda: timm.create_model("se_plugin_resnet26", num_classes=10),
    "timm_basic": lambda: timm.create_model("se_plugin_resnet18", num_classes=10),
    "torchvision_basic": lambda: add_se(torchvision.models.resnet18(num_classes=10)),
    "timm_dla_bottleneck": lambda: timm.create_model("se_plugin_dla46_c", num_classes=10),
    "timm_res2net": lambda: add_se(  # one Bottle2neck per stage, the multi-scale split of 4 groups
        ResNet(block=Bottle2neck, layers=(1, 1, 1, 1), base_width=4, cardinality=4, block_args=dict(scale=4),
               num_classes=10)  # fmt: skip
    ),
    "torchvision_frozen_bn": lambda: add_se(  # the detection backbones' norm
        torchvision.models.resnet50(num_classes=10, norm_layer=torchvision.ops.misc.FrozenBatchNorm2d)
    ),
}


def _model(kind: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = randomize_norm_stats(_MODELS[kind]()).to(dtype)
    for se in se_modules(model).values():
        se.reset_parameters("random")
    return model


def _grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor, state: dict) -> dict[str, torch.Tensor]:
    model.load_state_dict(state)  # train mode updates the running statistics
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), target).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("fused_min_elements", [0, 2**18], ids=["norm-fused", "norm-own-backward"])
@pytest.mark.parametrize("kind", list(_MODELS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_model_gradients_equal_the_plain_implementation(kind, training, fused_min_elements, monkeypatch):
    # every block of these small test inputs is below the default size for the fused norm backward: both forms
    monkeypatch.setattr(norm_scale_add_module, "FUSED_MIN_ELEMENTS", fused_min_elements)
    # float64: train-mode BatchNorm over the few values of a small test batch's last stage is ill-conditioned (an
    # fp32 rounding difference can grow ~1e5-fold there, for the plain SE as much as for ours); in float64 the same
    # amplification stays far below 1e-6
    model = _model(kind, torch.float64).train(training)
    torch.manual_seed(2)
    x, target = torch.randn(4, 3, 64, 64, dtype=torch.float64), torch.randint(0, 10, (4,))
    state = copy.deepcopy(model.state_dict())
    fused = _grads(model, x, target, state)
    plain = _grads(set_se_fused(model, False), x, target, state)
    assert fused.keys() == plain.keys()
    for name in plain:
        scale = plain[name].abs().max().item()
        assert (fused[name] - plain[name]).abs().max().item() <= 1e-6 * scale, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_gradients_match_addcmul(dtype):
    """Under autocast the block's gradients equal those of the addcmul path (same forward, same kernels) up to the
    half-precision rounding of the gate gradient, which ScaleAdd accumulates in float32."""
    bn = _bn(32, True)
    torch.manual_seed(3)
    z = torch.randn(4, 32, 8, 8).to(dtype).requires_grad_()
    shortcut = torch.randn(4, 32, 8, 8).to(dtype).requires_grad_()
    gate = torch.rand(4, 32, 1, 1).to(dtype).requires_grad_()
    state = copy.deepcopy(bn.state_dict())

    def run(add):
        bn.load_state_dict(state)
        for t in (z, shortcut, gate, bn.weight):
            t.grad = None
        with torch.autocast("cpu", dtype=dtype):
            y = add(bn, shortcut, z, gate)
        y.float().square().sum().backward()
        return y.detach(), [t.grad.clone() for t in (z, shortcut, gate, bn.weight)]

    y_ref, grads_ref = run(_addcmul)
    y, grads = run(_scale_add)
    assert y.dtype == y_ref.dtype and torch.equal(y, y_ref)
    for actual, expected in zip(grads, grads_ref, strict=True):
        assert actual.dtype == expected.dtype
        eps = torch.finfo(dtype).eps  # the reference's gate gradient sums 64 half-precision products
        assert (actual.float() - expected.float()).abs().max() <= 8 * 8 * eps * expected.float().abs().max()


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct activations autograd keeps for backward (each storage once; parameters excluded)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(storages.values())


@pytest.mark.parametrize("fused_min_elements", [0, 2**18], ids=["norm-fused", "norm-own-backward"])
@pytest.mark.parametrize("base_name", ["resnet50", "resnet18"])
def test_training_keeps_only_gate_sized_tensors_beyond_the_base(base_name, fused_min_elements, monkeypatch):
    monkeypatch.setattr(norm_scale_add_module, "FUSED_MIN_ELEMENTS", fused_min_elements)
    se_name = f"se_plugin_{base_name}"
    torch.manual_seed(0)
    base, ours = timm.create_model(base_name).train(), timm.create_model(se_name).train()
    x = torch.randn(2, 3, 64, 64)
    extra = _saved_bytes(ours, x) - _saved_bytes(base, x)
    # what SE may keep: per block a handful of (N, C) vectors (pooled input, MLP activations, gate, affine)
    per_channel = sum(x.shape[0] * se.channels * 4 for se in se_modules(ours).values())
    assert 0 < extra <= 6 * per_channel  # measured: about 4 vectors per block
    set_se_fused(ours, False)  # the plain SE keeps each branch output: far more
    block_outputs = _saved_bytes(ours, x) - _saved_bytes(base, x)
    assert block_outputs > 4 * extra
