"""The block's last BatchNorm and SE's fused add differentiated as one (insert/norm_scale_add.py)."""

import copy
import math

import pytest
import timm
import torch
import torchvision
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SqueezeExcite, add_se, se_modules
from se_plugins.insert import norm_scale_add as norm_scale_add_module
from se_plugins.insert import scale_add as scale_add_module
from se_plugins.insert.norm_scale_add import norm_scale_add
from se_plugins.insert.scale_add import per_channel_grad_sums


@pytest.fixture(autouse=True)
def _fused_at_every_size(monkeypatch):
    """The tests' small tensors take the fused forms too (by default only blocks of FUSED_MIN_ELEMENTS /
    SCALE_ADD_MIN_ELEMENTS do)."""
    monkeypatch.setattr(norm_scale_add_module, "FUSED_MIN_ELEMENTS", 0)
    monkeypatch.setattr(scale_add_module, "SCALE_ADD_MIN_ELEMENTS", 0)


def _bn(channels: int, *, training: bool, track: bool = True, momentum: float | None = 0.1) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels, momentum=momentum, track_running_stats=track).train(training).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        if track:
            bn.running_mean.uniform_(-1.0, 1.0)
            bn.running_var.uniform_(0.5, 2.0)
    return bn


def _se(channels: int) -> SqueezeExcite:
    torch.manual_seed(1)
    return SqueezeExcite(channels, reduction=4, init="random").double()


def _op_by_op(bn, se, shortcut, z):
    out = bn(z)
    return torch.addcmul(shortcut, out, se.gate(out))


def _fused(bn, se, shortcut, z):
    result = norm_scale_add(bn, z, shortcut, se)
    assert result is not None
    return result


def _run(add, bn, se, state, z, shortcut, weight):
    """Two calls (the running statistics' update matters from the second on), then the gradients of everything."""
    bn.load_state_dict(state)
    leaves = [z, shortcut, *bn.parameters(), *se.parameters()]
    for t in leaves:
        t.grad = None
    y = add(bn, se, shortcut, z)
    y = add(bn, se, y, z)
    (y * weight).sum().backward()
    grads = [None if t.grad is None else t.grad.clone() for t in leaves]
    return y.detach(), grads, copy.deepcopy(bn.state_dict())


def _assert_close(actual, expected, ops: int):
    """Equal up to ``ops`` float64 roundings of sums of up to ``numel`` terms, relative to the tensor's size."""
    bound = ops * math.sqrt(expected.numel()) * torch.finfo(expected.dtype).eps * expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= bound


@pytest.mark.parametrize(
    ("training", "track", "momentum"),
    [(True, True, 0.1), (True, True, None), (True, False, 0.1), (False, True, 0.1), (False, False, 0.1)],
    ids=["train", "train-cumulative", "train-untracked", "eval", "eval-untracked"],
)
def test_equals_the_op_by_op_gradients(training, track, momentum):
    bn, se = _bn(16, training=training, track=track, momentum=momentum), _se(16)
    torch.manual_seed(2)
    z = (torch.randn(4, 16, 6, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    shortcut = torch.randn(4, 16, 6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 16, 6, 5, dtype=torch.float64)
    state = copy.deepcopy(bn.state_dict())
    y_ref, grads_ref, state_ref = _run(_op_by_op, bn, se, state, z, shortcut, weight)
    y, grads, state_after = _run(_fused, bn, se, state, z, shortcut, weight)
    _assert_close(y, y_ref, ops=8)  # the pool is taken from z: the norm output's mean up to rounding
    for key, value in state_ref.items():  # running statistics updated exactly as nn.BatchNorm2d does
        assert torch.equal(state_after[key], value), key
    for actual, expected in zip(grads, grads_ref, strict=True):
        _assert_close(actual, expected, ops=16)


def test_frozen_batch_norm_of_detection_backbones():
    """The detection backbones' frozen BatchNorm (running statistics, no parameters): output bit-for-bit the
    op-by-op one with the gates at 1 (the norm's own forward), gradients equal with a trained gate."""
    torch.manual_seed(6)
    frozen = torchvision.ops.misc.FrozenBatchNorm2d(8).double()  # also what timm's freeze_batch_norm_2d makes
    with torch.no_grad():
        frozen.weight.uniform_(0.5, 2.0), frozen.bias.uniform_(-1, 1)
        frozen.running_mean.uniform_(-1, 1), frozen.running_var.uniform_(0.5, 2.0)
    z = torch.randn(2, 8, 5, 4, dtype=torch.float64, requires_grad=True)
    shortcut = torch.randn(2, 8, 5, 4, dtype=torch.float64, requires_grad=True)
    identity = SqueezeExcite(8, reduction=2).double()
    assert torch.equal(_fused(frozen, identity, shortcut, z), shortcut + frozen(z))
    se, weight = _se(8), torch.randn(2, 8, 5, 4, dtype=torch.float64)
    state = copy.deepcopy(frozen.state_dict())
    _, grads_ref, _ = _run(_op_by_op, frozen, se, state, z, shortcut, weight)
    _, grads, _ = _run(_fused, frozen, se, state, z, shortcut, weight)
    for actual, expected in zip(grads, grads_ref, strict=True):
        _assert_close(actual, expected, ops=16)


def test_a_zero_norm_weight_still_gets_its_gradient():
    """With ``weight = 0`` a channel's output is its bias, but the weight's gradient is not zero: it needs the
    centred pooled input, which the forward keeps from ``z`` (not recoverable from the output)."""
    bn, se = _bn(8, training=True), _se(8)
    with torch.no_grad():
        bn.weight[:3] = 0.0
    torch.manual_seed(3)
    z = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    shortcut = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    weight = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    state = copy.deepcopy(bn.state_dict())
    _, grads_ref, _ = _run(_op_by_op, bn, se, state, z, shortcut, weight)
    _, grads, _ = _run(_fused, bn, se, state, z, shortcut, weight)
    bn_weight_grad, bn_weight_grad_ref = grads[2], grads_ref[2]
    assert bn_weight_grad_ref[:3].abs().min() > 0
    _assert_close(bn_weight_grad, bn_weight_grad_ref, ops=16)


def test_frozen_parts_get_no_gradient():
    """A frozen norm (fine-tuning with fixed BN affine) and an input without grad still give the right gradients."""
    bn, se = _bn(8, training=True), _se(8)
    bn.requires_grad_(False)
    torch.manual_seed(4)
    z = torch.randn(2, 8, 4, 4, dtype=torch.float64)  # e.g. the output of a frozen conv on an input without grad
    shortcut = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    state = copy.deepcopy(bn.state_dict())
    _, grads_ref, _ = _run(_op_by_op, bn, se, state, z, shortcut, weight)
    _, grads, _ = _run(_fused, bn, se, state, z, shortcut, weight)
    assert grads[0] is None and grads[2] is None and grads[3] is None
    for actual, expected in zip(grads[4:] + grads[1:2], grads_ref[4:] + grads_ref[1:2], strict=True):
        _assert_close(actual, expected, ops=16)


def test_not_applied_where_it_does_not_fit():
    """Half precision, other norms and SyncBatchNorm in training go the op-by-op way; nothing is counted then."""
    se = SqueezeExcite(4, reduction=2)
    z, shortcut = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    bn = nn.BatchNorm2d(4)
    assert norm_scale_add(bn.half(), z.half(), shortcut.half(), se.half()) is None
    assert norm_scale_add(nn.BatchNorm2d(4), z, shortcut.double(), se.float()) is None  # mixed dtypes
    assert norm_scale_add(nn.GroupNorm(2, 4), z, shortcut, se) is None
    assert norm_scale_add(nn.SyncBatchNorm(4).train(), z, shortcut, se) is None
    assert norm_scale_add(nn.BatchNorm2d(4, affine=False), z, shortcut, se) is None
    assert int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_per_channel_grad_sums(layout):
    """BatchNorm's backward reduction (contiguous CPU float) and the plain sums (other layouts) give the sums."""
    torch.manual_seed(5)
    grad, z = torch.randn(3, 8, 5, 7), torch.randn(3, 8, 5, 7) * 2 + 3
    mean = z.mean((0, 2, 3))
    if layout == "channels_last":
        grad, z = (t.contiguous(memory_format=torch.channels_last) for t in (grad, z))
    grad_sum, grad_dot = per_channel_grad_sums(grad, z, mean)
    g64, z64 = grad.double(), z.double()
    expected_sum = g64.sum((2, 3))
    expected_dot = (g64 * (z64 - mean.double().view(1, -1, 1, 1))).sum((2, 3))
    eps = torch.finfo(torch.float32).eps
    terms = 5 * 7  # each sum: 35 products of float32 values, rounded; the uncentred form adds the mean's rounding
    assert (grad_sum - expected_sum).abs().max() <= terms * eps * g64.abs().sum((2, 3)).max()
    dot_scale = (g64.abs() * (z64.abs() + mean.double().abs().view(1, -1, 1, 1))).sum((2, 3)).max()
    assert (grad_dot - expected_dot).abs().max() <= 2 * terms * eps * dot_scale


def test_input_gradient_keeps_the_input_layout():
    """The input gradient has the layout of the incoming gradient (as BatchNorm's own backward gives it)."""
    bn, se = _bn(8, training=True).float(), _se(8).float()
    for memory_format in (torch.contiguous_format, torch.channels_last):
        z = torch.randn(2, 8, 4, 4).contiguous(memory_format=memory_format).requires_grad_()
        shortcut = torch.randn(2, 8, 4, 4).contiguous(memory_format=memory_format)
        norm_scale_add(bn, z, shortcut, se).relu().sum().backward()
        assert z.grad.is_contiguous(memory_format=memory_format)


_FROZEN = torchvision.ops.misc.FrozenBatchNorm2d


def _graph_node_names(output: torch.Tensor) -> list[str]:
    seen, stack, names = set(), [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


@pytest.mark.parametrize(
    ("build", "dtype"),
    [
        (lambda: timm.create_model("se_plugin_resnet18"), torch.float32),
        (lambda: add_se(torchvision.models.resnet50(norm_layer=_FROZEN)), torch.float64),
        (lambda: timm.create_model("se_plugin_dla34"), torch.float32),  # DlaBasic
        (lambda: timm.create_model("se_plugin_dla46_c"), torch.float32),  # DlaBottleneck
        (lambda: timm.create_model("se_plugin_dla60_res2net"), torch.float32),  # DlaBottle2neck
        (lambda: timm.create_model("se_plugin_res2net50_14w_8s"), torch.float32),  # Bottle2neck
        (lambda: timm.create_model("se_plugin_resnet18"), torch.bfloat16),  # half precision: ScaleAdd alone
    ],
    ids=[
        "timm-basic-fp32", "torchvision-frozen-bn-fp64", "dla-basic", "dla-bottleneck", "dla-res2net", "res2net",
        "timm-bf16",
    ],  # fmt: skip
)
def test_eager_training_takes_the_fused_backward(build, dtype):
    """Every SE block of a ResNet or DLA uses it in eager float training: one node per block in the graph."""
    model = build().train().to(dtype)
    names = _graph_node_names(model(torch.randn(2, 3, 64, 64, dtype=dtype)).sum())
    blocks = len(se_modules(model))
    assert blocks > 0 and names.count("ScaleAddBackward") == blocks
    assert names.count("NormPoolBackward") == (0 if dtype == torch.bfloat16 else blocks)


def test_small_blocks_keep_the_norms_own_backward(monkeypatch):
    """Below FUSED_MIN_ELEMENTS (where its extra small ops cost more than it saves) ScaleAdd follows the norm; below
    SCALE_ADD_MIN_ELEMENTS (its fixed cost per call above what it saves) torch.addcmul does."""
    monkeypatch.setattr(norm_scale_add_module, "FUSED_MIN_ELEMENTS", 2**18)
    model = timm.create_model("se_plugin_resnet18").train()
    x = torch.randn(2, 3, 64, 64)  # the largest block: 2 x 64 x 16 x 16
    names = _graph_node_names(model(x).sum())
    assert names.count("NormPoolBackward") == 0 and names.count("ScaleAddBackward") == len(se_modules(model))
    monkeypatch.setattr(scale_add_module, "SCALE_ADD_MIN_ELEMENTS", 2**16)
    names = _graph_node_names(model(x).sum())
    assert names.count("ScaleAddBackward") == 0 and names.count("AddcmulBackward0") == len(se_modules(model))
    names = _graph_node_names(model(torch.randn(2, 3, 128, 128)).sum())  # layer1 2**17, layer2 2**16 elements
    assert names.count("ScaleAddBackward") == 4 and names.count("AddcmulBackward0") == len(se_modules(model)) - 4
    bn, se, z = nn.BatchNorm2d(128), SqueezeExcite(128), torch.randn(2, 128, 32, 32)  # 2**18 elements: fused
    assert norm_scale_add(bn, z, torch.randn_like(z), se).grad_fn is not None
    assert norm_scale_add(bn, z[:, :, :16], torch.randn_like(z[:, :, :16]), se) is None
