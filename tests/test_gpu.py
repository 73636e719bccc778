"""Checks that need CUDA (skipped without it; run by tools/gpu_check.sh on a GPU machine, never by CPU CI).

AMP (float16, bfloat16) and channels_last for the fused SE block, torch.compile against eager, and NCCL DDP (one
process) with SyncBatchNorm. Tolerances follow the dtype: same-kernel comparisons at float32 rounding, half-precision
comparisons at that precision's eps times the depth.
"""

import copy

import pytest
import timm
import torch
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import se_modules, set_se_fused
from tests.conftest import randomize_norm_stats, rounding_tolerance

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _model(name: str = "se_plugin_resnet26") -> nn.Module:
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model(name, num_classes=10))
    for se in se_modules(model).values():
        se.reset_parameters("random")
    return model.cuda()


def _step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype | None, state: dict):
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
        out = model(x)
        loss = nn.functional.cross_entropy(out.float(), target)
    loss.backward()
    return out.detach().float(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fused_training_matches_plain_on_cuda(dtype, channels_last):
    model = _model().train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(16, 3, 96, 96, device="cuda").to(memory_format=fmt)
    target = torch.randint(0, 10, (16,), device="cuda")
    state = copy.deepcopy(model.state_dict())
    out_fused, fused = _step(model, x, target, dtype, state)
    out_plain, plain = _step(set_se_fused(model, False), x, target, dtype, state)
    eps = torch.finfo(dtype or torch.float32).eps
    depth = 26
    assert (out_fused - out_plain).abs().max() <= depth * eps * max(1.0, out_plain.abs().max().item())
    for name in plain:  # gradients: the same function, rounded differently per op along the depth
        scale = plain[name].abs().max().item()
        assert (fused[name] - plain[name]).abs().max().item() <= depth * 16 * eps * scale + 1e-30, name


def test_identity_insertion_is_exact_on_cuda():
    torch.manual_seed(0)
    base = randomize_norm_stats(timm.create_model("resnet26", num_classes=10)).cuda().eval()
    ours = timm.create_model("se_plugin_resnet26", num_classes=10).cuda().eval()
    ours.load_state_dict(base.state_dict(), strict=False)
    x = torch.randn(4, 3, 96, 96, device="cuda")
    with torch.no_grad():
        assert torch.equal(ours(x), base(x))


def test_compiled_training_step_matches_eager():
    model = _model("se_plugin_resnet18").train()
    x = torch.randn(8, 3, 96, 96, device="cuda")
    target = torch.randint(0, 10, (8,), device="cuda")
    state = copy.deepcopy(model.state_dict())
    out_eager, eager = _step(model, x, target, None, state)
    compiled = torch.compile(model)
    out_compiled, grads = _step(compiled, x, target, None, state)
    # inductor fuses and reorders the same ops: float32 rounding along ResNet-18's depth
    assert (out_compiled - out_eager).abs().max().item() <= rounding_tolerance(out_eager, layers=18, fan_in=3 * 3 * 512)
    for name, g in eager.items():
        key = name if name in grads else f"_orig_mod.{name}"
        assert (grads[key] - g).abs().max().item() <= rounding_tolerance(g, layers=18, fan_in=3 * 3 * 512), name


def test_nccl_ddp_one_process_with_sync_batchnorm_matches_single_gpu(tmp_path):
    """DDP over NCCL (one process) with SyncBatchNorm: gradients equal the single-GPU model's (mean over 1 rank)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        model = _model("se_plugin_resnet18").train()
        x = torch.randn(8, 3, 96, 96, device="cuda")
        target = torch.randint(0, 10, (8,), device="cuda")
        state = copy.deepcopy(model.state_dict())
        _, single = _step(model, x, target, None, state)
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
        ddp = DistributedDataParallel(synced, device_ids=[0])
        _, grads = _step(ddp, x, target, None, {f"module.{k}": v for k, v in state.items()})
        assert dist.get_backend() == "nccl"
        for name, g in single.items():
            tol = rounding_tolerance(g, layers=18, fan_in=3 * 3 * 512)
            assert (grads[f"module.{name}"] - g).abs().max().item() <= tol, name
    finally:
        dist.destroy_process_group()
