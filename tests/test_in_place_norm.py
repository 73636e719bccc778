"""An SE block's last norm written into its input in eager CPU inference (insert/in_place_norm.py)."""

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se
from se_plugins.insert.in_place_norm import fixed_norm_in_place, modules_without_hooks
from tests.conftest import randomize_norm_stats, rounding_tolerance

_FROZEN = torchvision.ops.misc.FrozenBatchNorm2d


class _OpNames(TorchDispatchMode):
    """Records the name of every aten op run."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _norm(kind: str, dtype: torch.dtype) -> nn.Module:
    norm = {"bn": nn.BatchNorm2d(16).eval(), "sync": nn.SyncBatchNorm(16).eval(), "frozen": _FROZEN(16)}[kind]
    return randomize_norm_stats(norm).to(dtype)


@pytest.mark.parametrize("kind", ["bn", "sync", "frozen"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_writes_the_norms_own_output_into_its_input(kind, dtype, channels_last):
    norm = _norm(kind, dtype)
    z = torch.randn(3, 16, 7, 9, dtype=dtype) * 3 + 1
    if channels_last:
        z = z.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = norm(z)
        storage = z.data_ptr()
        out = fixed_norm_in_place(norm, z)
    assert out is z and out.data_ptr() == storage
    assert torch.equal(out, expected)  # the same kernel (ops), so the same bits
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_only_where_the_output_may_overwrite_the_input():
    z = torch.randn(2, 8, 4, 4)
    before = z.clone()
    with torch.no_grad():
        assert fixed_norm_in_place(nn.BatchNorm2d(8).train(), z) is None  # batch statistics
        assert fixed_norm_in_place(nn.BatchNorm2d(8, track_running_stats=False).eval(), z) is None
        assert fixed_norm_in_place(nn.BatchNorm2d(8, affine=False).eval(), z) is None
        assert fixed_norm_in_place(nn.SyncBatchNorm(8).train(), z) is None
        assert fixed_norm_in_place(nn.GroupNorm(2, 8), z) is None
        assert fixed_norm_in_place(nn.BatchNorm2d(8).eval(), z[:, :, 1:]) is None  # a view of another tensor
        assert fixed_norm_in_place(nn.BatchNorm2d(8).eval(), z.bfloat16()) is None  # half precision: norm(z)
        assert fixed_norm_in_place(_FROZEN(8), z.double()) is None  # float32 statistics, float64 input
        if torch.backends.mkldnn.is_available():
            assert fixed_norm_in_place(nn.BatchNorm2d(8).eval(), z.to_mkldnn()) is None  # another layout
    assert fixed_norm_in_place(nn.BatchNorm2d(8).eval(), z) is None  # autograd on
    assert torch.equal(z, before)  # left as it was


def _resnet_pair(name: str):
    torch.manual_seed(0)
    base = randomize_norm_stats(timm.create_model(name)).eval()
    se = timm.create_model(f"se_plugin_{name}").eval()
    se.load_state_dict(base.state_dict(), strict=False)
    return base, se


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_eager_inference_runs_the_last_norms_in_place_and_stays_bit_exact(name):
    """Identity SE: the SE model's eager inference output equals the base's bit for bit, with every block's last
    norm written into its convolution's output (no other batch-norm call for it)."""
    base, se = _resnet_pair(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), _OpNames() as ops:
        out = se(x)
    blocks = sum(1 for m in se.modules() if hasattr(m, "se_position"))
    assert ops.names.count("aten.native_batch_norm.out") == blocks
    norms = sum(1 for m in se.modules() if isinstance(m, nn.BatchNorm2d))
    assert ops.names.count("aten.native_batch_norm.default") == norms - blocks
    with torch.no_grad():
        assert torch.equal(out, base(x))
    with torch.inference_mode():
        assert torch.equal(se(x), out)


def test_random_se_equals_the_out_of_place_norm():
    """With a random SE, the in-place path gives the outputs the ordinary fused path gives (a hook turns it off)."""
    torch.manual_seed(0)
    se = randomize_norm_stats(timm.create_model("se_plugin_resnet50", se_init="random")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        in_place = se(x)
        handle = se.layer1[0].conv1.register_forward_hook(lambda *args: None)
        with _OpNames() as ops:
            reference = se(x)
        handle.remove()
    assert ops.names.count("aten.native_batch_norm.out") == 16 - 1  # layer1[0] has the hook
    assert torch.equal(in_place, reference)


def test_a_hook_keeps_the_tensor_it_sees():
    """A forward hook on the convolution before the last norm gets that convolution's output, not the norm's: the
    block then runs its norm out of place."""
    torch.manual_seed(0)
    block = randomize_norm_stats(timm.create_model("se_plugin_resnet50", se_init="random").layer1[1]).eval()
    seen = []
    block.conv3.register_forward_hook(lambda module, inputs, output: seen.append((output, output.clone())))
    assert not modules_without_hooks(block)
    with torch.no_grad():
        block(torch.randn(2, 256, 8, 8))
    kept, copy_at_hook = seen[0]
    assert torch.equal(kept, copy_at_hook)


def test_a_hook_deeper_in_the_block_counts_too():
    block = timm.create_model("se_plugin_resnet50").layer1[0].eval()
    assert modules_without_hooks(block)
    handle = block.downsample[0].register_forward_pre_hook(lambda *args: None)  # inside the downsample Sequential
    assert not modules_without_hooks(block)
    handle.remove()
    assert modules_without_hooks(block)


def test_a_global_hook_turns_it_off():
    torch.manual_seed(0)
    block = timm.create_model("se_plugin_resnet18").layer1[0].eval()
    assert modules_without_hooks(block)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert not modules_without_hooks(block)
        with torch.no_grad(), _OpNames() as ops:
            block(torch.randn(1, 64, 8, 8))
        assert "aten.native_batch_norm.out" not in ops.names
    finally:
        handle.remove()


def test_a_hook_on_the_block_itself_does_not_turn_it_off():
    """A hook on the block sees its input and output only (as timm's feature hooks do)."""
    block = timm.create_model("se_plugin_resnet18").layer1[0].eval()
    block.register_forward_hook(lambda *args: None)
    assert modules_without_hooks(block)


def test_frozen_norm_detection_backbone_stays_bit_exact():
    """torchvision's FrozenBatchNorm2d ResNet-50 (the detection backbones'): identity SE, eager inference, the same
    outputs as the base bit for bit, its last norms in place (x * scale + bias as mul_ and add_)."""
    torch.manual_seed(0)
    base = torchvision.models.resnet50(norm_layer=_FROZEN)
    randomize_norm_stats(base).eval()
    se = add_se(torchvision.models.resnet50(norm_layer=_FROZEN)).eval()
    se.load_state_dict(base.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), _OpNames() as ops:
        out = se(x)
    assert ops.names.count("aten.mul_.Tensor") == 16
    with torch.no_grad():
        assert torch.equal(out, base(x))


def test_training_and_autograd_keep_their_paths():
    """With autograd on (eval-mode inference with grad, e.g. for saliency) the norm runs out of place: the block's
    intermediate tensors stay intact for backward."""
    torch.manual_seed(0)
    se = randomize_norm_stats(timm.create_model("se_plugin_resnet18", se_init="random")).eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    with _OpNames() as ops:
        se(x).sum().backward()
    assert "aten.native_batch_norm.out" not in ops.names
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_vmap_keeps_the_functional_form():
    """torch.func.vmap has no batching rule for out= ops: under it the norm and the scale-add run out of place, and
    the batched inference equals the per-sample one."""
    torch.manual_seed(0)
    se = randomize_norm_stats(timm.create_model("se_plugin_resnet18", se_init="random")).eval()
    x = torch.randn(3, 1, 3, 32, 32)
    with torch.no_grad():
        batched = torch.vmap(se)(x)
        single = torch.stack([se(sample) for sample in x])
    # the same ops; vmap runs the convolutions on a batch of 3 (another kernel choice): ResNet-18's ~20 layers,
    # fan-in up to 3 * 3 * 512, may each round differently
    assert (batched - single).abs().max().item() <= rounding_tolerance(single, layers=20, fan_in=3 * 3 * 512)


def test_a_tensor_subclass_is_left_alone():
    class Tagged(torch.Tensor):
        pass

    z = torch.randn(2, 8, 4, 4).as_subclass(Tagged)
    with torch.no_grad():
        assert fixed_norm_in_place(randomize_norm_stats(nn.BatchNorm2d(8)).eval(), z) is None
