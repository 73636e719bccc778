import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import se_plugins  # noqa: F401  (registers se_plugin_* with timm)
from se_plugins import add_se, benchmark, se_modules, set_se_fused, steady_heap
from tests.conftest import randomize_norm_stats, rounding_tolerance

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--batch-size", "2", "--image-size", "64", "--repeats", "2", "--iters", "1", "--warmup", "1"]


def _args(*argv: str) -> argparse.Namespace:
    """The benchmark's options for an in-process run: ``--heap as-is`` unless ``argv`` says otherwise, so that the
    test process keeps glibc's defaults (``--heap steady`` lasts for the whole process: tested in a subprocess)."""
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    return parser.parse_args(["--heap", "as-is", *argv])


def _pool_scale_by_hand(batch: int, size: int, channels=(64, 128, 256, 512), strides=(4, 8, 16, 32), blocks=1):
    """2 * N*C*H*W per SE block of a ResNet with one SE block output per stage and ``blocks`` blocks a stage."""
    return blocks * sum(2 * batch * c * (size // s) ** 2 for c, s in zip(channels, strides, strict=True))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "sub" / "out.json"
    args = _args(
        "--model",
        "se_plugin_resnet10t",
        "--compare",
        "seresnet18",
        "--plain",
        "--mode",
        "both",
        "--threads",
        "1",
        "--json",
        str(out),
        *TINY,
    )
    result = benchmark.run(args)
    return result, json.loads(out.read_text())


def test_json_is_the_returned_result(tiny_run):
    result, data = tiny_run
    assert data["config"]["model"] == "se_plugin_resnet10t"
    assert set(data["results"]) == {"infer", "train"}
    names = ["resnet10t", "se_plugin_resnet10t", "se_plugin_resnet10t (plain)", "seresnet18"]
    assert list(data["models"]) == names
    assert [data["models"][n]["role"] for n in names] == ["base", "se", "se_plain", "compare"]
    assert json.loads(json.dumps(result, default=str)) == data
    assert not list(Path(data["config"]["json"]).parent.glob("*.tmp"))  # atomic write left no temp file


def test_params_and_flops_match_direct_counts(tiny_run):
    _, data = tiny_run
    x = torch.rand(2, 3, 64, 64)
    for name, timm_name in [
        ("resnet10t", "resnet10t"),
        ("se_plugin_resnet10t", "se_plugin_resnet10t"),
        ("se_plugin_resnet10t (plain)", "se_plugin_resnet10t"),
        ("seresnet18", "seresnet18"),
    ]:
        model = timm.create_model(timm_name).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        info = data["models"][name]
        assert info["params"] == sum(p.numel() for p in model.parameters()), name
        assert info["flops"] == counter.get_total_flops(), name
    assert data["models"]["resnet10t"]["se_sites"] == 0
    assert data["models"]["resnet10t"]["se_pool_scale_flops"] == 0
    for name in ("se_plugin_resnet10t", "se_plugin_resnet10t (plain)"):  # fused or not: the same SE work
        assert data["models"][name]["se_sites"] == 4
        assert data["models"][name]["se_pool_scale_flops"] == _pool_scale_by_hand(2, 64)
    assert data["models"]["seresnet18"]["se_sites"] == 8  # timm's own SEModule, counted too
    assert data["models"]["seresnet18"]["se_pool_scale_flops"] == _pool_scale_by_hand(2, 64, blocks=2)
    assert data["plain_vs_fused_max_abs_diff"] <= 1e-5


def test_ratios_and_statistics_follow_the_recorded_times(tiny_run):
    _, data = tiny_run
    for mode, res in data["results"].items():
        base = res["resnet10t"]
        for name, r in res.items():
            t = r["times_s"]
            assert len(t) == len(r["cpu_times_s"]) == len(r["page_faults_per_step"]) == 2
            assert r["page_faults_median"] == pytest.approx(statistics.median(r["page_faults_per_step"]))
            assert min(r["page_faults_per_step"]) >= 0
            assert r["median_ms"] == pytest.approx(statistics.median(t) * 1e3)
            assert r["min_ms"] == pytest.approx(min(t) * 1e3)
            assert r["throughput_img_s"] == pytest.approx(2 / statistics.median(t))
            assert r["peak_memory_mib"] > 0
            if name == "resnet10t":
                assert name not in data["ratios"][mode]
                continue
            ratio = data["ratios"][mode][name]
            per_repeat = [a / b for a, b in zip(t, base["times_s"], strict=True)]
            assert ratio["latency"]["median"] == pytest.approx(statistics.median(per_repeat))
            assert ratio["latency"]["min"] == pytest.approx(min(per_repeat))
            assert ratio["latency"]["max"] == pytest.approx(max(per_repeat))
            low, high = benchmark.median_interval(per_repeat)
            assert ratio["latency"]["ci95_low"] == pytest.approx(low)
            assert ratio["latency"]["ci95_high"] == pytest.approx(high)
            assert ratio["latency"]["of_min"] == pytest.approx(min(t) / min(base["times_s"]))
            assert ratio["throughput"]["median"] == pytest.approx(statistics.median([1 / p for p in per_repeat]))
            cpu = [a / b for a, b in zip(r["cpu_times_s"], base["cpu_times_s"], strict=True)]
            assert ratio["cpu_time"]["median"] == pytest.approx(statistics.median(cpu))
    # a training step holds activations and gradients: it needs more memory than inference
    assert (
        data["results"]["train"]["resnet10t"]["peak_memory_mib"]
        > data["results"]["infer"]["resnet10t"]["peak_memory_mib"]
    )


def test_page_faults_are_counted_per_step():
    """A step that touches a fresh 64 MiB buffer (above glibc's largest mmap threshold: new pages every time) faults
    at least once per 2 MiB (huge pages) of it; one that rewrites a buffer it keeps faults far less."""
    kept = torch.empty(2**24)

    def fresh() -> None:
        torch.empty(2**24).fill_(1.0)

    def reuse() -> None:
        kept.fill_(1.0)

    reuse()
    _, _, fresh_faults = benchmark._timed(fresh, 3, torch.device("cpu"))
    _, _, reuse_faults = benchmark._timed(reuse, 3, torch.device("cpu"))
    assert fresh_faults >= 2**26 / 2**21
    assert reuse_faults < fresh_faults / 4


def test_table_lists_every_model_and_mode(tiny_run):
    result, _ = tiny_run
    table = benchmark.format_table(result)
    assert "faults/step" in table
    assert table.count("se_plugin_resnet10t (plain)") == 2 and table.count("1 (base)") == 2
    assert "2 repeats x 1 iters" in table


def test_median_interval_is_the_binomial_order_statistics():
    """The distribution-free 95 % interval of the median: (x_(k), x_(n+1-k)) with the largest k whose coverage
    1 - 2 P(Binomial(n, 1/2) < k) is still >= 95 % (the textbook table: n=11 -> k=2, 21 -> 6, 31 -> 10, 41 -> 14)."""
    for n, k in ((6, 1), (11, 2), (15, 4), (21, 6), (31, 10), (41, 14)):
        values = [float(v) for v in reversed(range(1, n + 1))]  # unsorted input
        assert benchmark.median_interval(values) == (k, n + 1 - k)
        coverage = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n
        assert coverage >= 0.95 > 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    assert benchmark.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few repeats for 95 %: min, max


def test_ratio_and_summary_by_hand():
    r = benchmark.ratios([2.0, 3.0, 4.0], [1.0, 2.0, 2.0])
    assert r["latency"] == {"median": 2.0, "ci95_low": 1.5, "ci95_high": 2.0, "min": 1.5, "max": 2.0, "of_min": 2.0}
    assert r["throughput"]["median"] == 0.5 and r["throughput"]["of_min"] == 0.5
    s = benchmark.summarize([0.1, 0.3, 0.2, 0.4], batch_size=4)
    assert s["median_ms"] == pytest.approx(250.0) and s["min_ms"] == pytest.approx(100.0)
    assert s["iqr_ms"] == pytest.approx(150.0)  # inclusive quartiles: 175 and 325 ms
    assert s["throughput_img_s"] == pytest.approx(16.0)


def test_segmentation_task_runs_smp_unets():
    import segmentation_models_pytorch as smp

    result = benchmark.run(
        _args("--task", "segmentation", "--model", "se_plugin_resnet10t", "--mode", "train", "--no-memory", *TINY)
    )
    for name in ("resnet10t", "se_plugin_resnet10t"):
        unet = smp.Unet(f"tu-{name}", encoder_weights=None, classes=21)
        assert result["models"][name]["params"] == sum(p.numel() for p in unet.parameters())
    assert result["models"]["se_plugin_resnet10t"]["se_pool_scale_flops"] == _pool_scale_by_hand(2, 64)
    assert set(result["ratios"]["train"]) == {"se_plugin_resnet10t"}


def test_detection_task_compares_faster_rcnns():
    result = benchmark.run(
        _args(
            "--task",
            "detection",
            "--model",
            "se_plugin_resnet10t",
            "--mode",
            "infer",
            "--no-memory",
            "--batch-size",
            "1",
            "--image-size",
            "64",
            "--repeats",
            "1",
            "--iters",
            "1",
            "--warmup",
            "0",
        )
    )
    base, se = result["models"]["resnet10t"], result["models"]["se_plugin_resnet10t"]
    se_fc = sum(p.numel() for n, p in timm.create_model("se_plugin_resnet10t").named_parameters() if ".se." in n)
    assert se["params"] - base["params"] == se_fc  # the same detector, plus the SE layers
    assert se["se_pool_scale_flops"] == _pool_scale_by_hand(1, 64)
    # no RPN NMS: both detectors see the same number of proposals, so they differ only by the SE's FC FLOPs
    assert 0 < se["flops"] - base["flops"] < 1e-3 * base["flops"]


def test_pool_scale_work_is_counted_on_the_tensor_se_scales():
    # a slot family: SE scales the depthwise conv's output (the expanded channels), not the narrower block output
    model = timm.create_model("se_plugin_mobilenetv2_050").eval()
    x = torch.rand(2, 3, 64, 64)
    blocks = [m for m in model.modules() if hasattr(m, "se") and hasattr(m, "conv_dw")]
    scaled = []
    hooks = [b.conv_dw.register_forward_hook(lambda mod, inp, out: scaled.append(out.numel())) for b in blocks]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    assert len(scaled) == len(se_modules(model)) == 17
    assert benchmark.se_pool_scale_flops(model, x) == (17, 2 * sum(scaled))


def test_torchvision_models_without_a_timm_twin():
    args = _args("--model", "se_plugin_torchvision.shufflenet_v2_x0_5", "--mode", "train", "--no-memory", *TINY)
    data = benchmark.run(args)
    base, ours = torchvision.models.shufflenet_v2_x0_5(), add_se(torchvision.models.shufflenet_v2_x0_5())
    assert list(data["models"]) == ["torchvision.shufflenet_v2_x0_5", "se_plugin_torchvision.shufflenet_v2_x0_5"]
    info = data["models"]["se_plugin_torchvision.shufflenet_v2_x0_5"]
    assert info["params"] == sum(p.numel() for p in ours.parameters())
    assert data["models"]["torchvision.shufflenet_v2_x0_5"]["params"] == sum(p.numel() for p in base.parameters())
    assert info["se_sites"] == len(se_modules(ours)) == 16
    assert math.isfinite(data["ratios"]["train"]["se_plugin_torchvision.shufflenet_v2_x0_5"]["latency"]["median"])
    googlenet = benchmark._build("classification", "se_plugin_torchvision.googlenet", 10, 64)  # no aux heads
    assert googlenet.aux1 is None and len(se_modules(googlenet)) == 9
    with pytest.raises(ValueError, match="torchvision has no classification model 'resnet5'"):
        benchmark.run(_args("--model", "se_plugin_torchvision.resnet5", *TINY))


def test_bad_input_is_a_clear_error(capsys):
    with pytest.raises(ValueError, match="--image-size must be a multiple of 32"):
        benchmark.run(_args("--task", "segmentation", "--image-size", "100"))
    with pytest.raises(ValueError, match="--repeats must be >= 1"):
        benchmark.run(_args("--repeats", "0"))
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        benchmark.run(_args("--model", "no_such_net", "--base", "resnet10t", *TINY))
    with pytest.raises(ValueError, match="--plain: 'seresnet18' has no se_plugins SE block"):
        benchmark.run(_args("--model", "seresnet18", "--base", "resnet18", "--plain", *TINY))
    with pytest.raises(SystemExit) as exc:
        benchmark.main(["--iters", "0"])
    assert exc.value.code == 2 and "--iters must be >= 1" in capsys.readouterr().err


def test_module_help_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "se_plugins.benchmark", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "--compare" in proc.stdout and "--channels-last" in proc.stdout


# ---------------------------------------------------------------------------------------------------- fast path
def _fused_and_plain(name: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    fused = randomize_norm_stats(timm.create_model(name, num_classes=7, se_init="random")).to(dtype)
    return fused, set_se_fused(copy.deepcopy(fused), False)


@pytest.mark.parametrize("name", ["se_plugin_resnet10t", "se_plugin_resnet26"])  # BasicBlock, Bottleneck
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_equals_plain_in_eval(name, channels_last, rng_input):
    fused, plain = _fused_and_plain(name)
    x = rng_input(2, 3, 64, 64)
    if channels_last:
        fused, plain = fused.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fused.eval(), plain.eval()
    with torch.no_grad():
        expected = plain(x)
    torch.testing.assert_close(expected, plain(x).detach())  # grad enabled: the autograd-safe fused form
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected)  # no grad: the in-place fused form
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), expected)
    torch.testing.assert_close(fused(x).detach(), expected)


@pytest.mark.parametrize("name", ["se_plugin_resnet10t", "se_plugin_resnet26"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_equals_plain_in_training(name, channels_last, rng_input):
    # float64: with batch 2 at 64 px the last stage's BatchNorm sees 8 values a channel, which amplifies float32
    # rounding differences in the gradients to ~1e-1 relative; in float64 fused and plain agree to ~1e-14.
    fused, plain = _fused_and_plain(name, torch.float64)
    x = rng_input(2, 3, 64, 64).double()
    if channels_last:
        fused, plain = fused.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    outs = []
    for model in (fused, plain):
        model.train()
        out = model(x)
        out.square().mean().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1])
    for (name_, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name_)
    for (name_, b), c in zip(fused.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(b, c, msg=name_)  # BN running statistics updated alike


@pytest.mark.parametrize("block_type", ["timm_basic", "tv_bottleneck"])
def test_fused_inference_leaves_block_input_and_shortcut_untouched(block_type, rng_input):
    """The no-grad fused path writes into the branch output only: never into the block input (the shortcut)."""
    if block_type == "timm_basic":
        block = timm.models.resnet.BasicBlock(32, 32)
    else:
        block = torchvision.models.resnet.Bottleneck(64, 16)
    wrapper = torch.nn.Sequential()
    wrapper.add_module("layer1", torch.nn.Sequential(block))
    add_se(randomize_norm_stats(wrapper), init="random", reduction=4)
    x = rng_input(2, 32 if block_type == "timm_basic" else 64, 8, 8)
    x_before = x.clone()
    block.eval()
    with torch.no_grad():
        fused_out = block(x)
        assert torch.equal(x, x_before)
        set_se_fused(wrapper, False)
        torch.testing.assert_close(fused_out, block(x))
    assert torch.equal(x, x_before)


def test_fused_with_frozen_branch_and_trainable_se(rng_input):
    """Frozen stages with trainable SE (detection fine-tuning): the gate needs grad while the branch does not."""
    fused, plain = _fused_and_plain("se_plugin_resnet10t")
    x = rng_input(2, 3, 64, 64)
    for model in (fused, plain):
        for name, p in model.named_parameters():
            p.requires_grad_(".se." in name)
        model.eval()
        model(x).square().mean().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None) == (".se." not in name)
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_fused_keeps_the_plain_result_dtype_under_autocast(rng_input):
    """An fp32 block input under bf16 autocast: the result stays fp32, as in the plain form."""
    fused, plain = _fused_and_plain("se_plugin_resnet10t")
    block_f, block_p = fused.layer1[0].eval(), plain.layer1[0].eval()
    x = rng_input(2, 64, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, out_p = block_f(x), block_p(x)
    assert out_f.dtype == out_p.dtype == torch.float32
    # one block; the two forms differ only in the element-wise tail (bf16 multiply and add vs one addcmul)
    tol = rounding_tolerance(out_p, layers=2, fan_in=1, dtype=torch.bfloat16)
    assert (out_f - out_p).abs().max().item() <= tol


def test_cpu_memory_measurement_prints_only_the_table():
    """The profiler's native log lines (USDT, the CUDA device-count ERROR without a GPU) stay out of the output."""
    cmd = [sys.executable, "-m", "se_plugins.benchmark", "--model", "se_plugin_resnet10t", "--mode", "train",
           "--threads", "1", "--batch-size", "2", "--image-size", "64", "--repeats", "1", "--iters", "1",
           "--warmup", "0", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    assert done.stderr == ""
    assert done.stdout.splitlines()[0].startswith("classification | cpu")
    assert done.stdout.splitlines()[0].endswith(f"| heap {steady_heap.DESCRIPTION}")  # the default on glibc
    assert "peak MiB" in done.stdout and "USDT" not in done.stdout and "ERROR" not in done.stdout


def test_an_in_process_run_with_the_heap_as_is_says_so(tiny_run):
    result, data = tiny_run
    assert result["config"]["heap"] == "as-is" and data["environment"]["heap"] == "as-is"
    assert benchmark.format_table(result).splitlines()[0].endswith("| heap as-is")


def test_the_header_shows_glibc_tunables(tiny_run):
    """An allocator setting changes which steps page-fault: a run made with one says so."""
    result, _ = tiny_run
    env = dict(result["environment"], glibc_tunables="glibc.malloc.trim_threshold=4294967296")
    header = benchmark.format_table(dict(result, environment=env)).splitlines()[0]
    assert header.endswith("| GLIBC_TUNABLES=glibc.malloc.trim_threshold=4294967296")
    plain = {k: v for k, v in result["environment"].items() if k != "glibc_tunables"}
    assert "GLIBC_TUNABLES" not in benchmark.format_table(dict(result, environment=plain)).splitlines()[0]


def test_a_cpu_run_keeps_the_cuda_home_warning_out_of_the_output():
    """Compiling for the CPU imports ``torch.utils.cpp_extension``, which warns ``No CUDA runtime is found`` where a
    CUDA toolkit is found without a GPU (here: ``CUDA_HOME`` set, no device visible); the benchmark keeps it out."""
    code = (
        "import sys, torch\n"
        "from se_plugins.benchmark import _cuda_home_warning_silenced\n"
        "if sys.argv[1] == 'silenced':\n"
        "    with _cuda_home_warning_silenced(torch.device('cpu')):\n"
        "        import torch.utils.cpp_extension\n"
        "else:\n"
        "    import torch.utils.cpp_extension\n"
        "import logging; assert logging.getLogger('torch.utils.cpp_extension').level == logging.NOTSET\n"
    )
    env = dict(os.environ, CUDA_HOME=tempfile.gettempdir(), CUDA_VISIBLE_DEVICES="")
    runs = {
        how: subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, env=env, timeout=120)
        for how in ("as-is", "silenced")
    }
    assert runs["as-is"].returncode == 0 and "No CUDA runtime is found" in runs["as-is"].stderr  # the control
    assert runs["silenced"].returncode == 0 and runs["silenced"].stderr == ""
