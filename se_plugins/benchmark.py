"""Side-by-side speed, FLOPs and memory of an SE model against its base (``se-plugins benchmark``).

All models run in one process with interleaved repeats: repeat ``r`` times every model for ``--iters`` steps in an
order rotated by ``r``, so slow phases of a shared machine hit all models alike. Ratios SE/base are the median of
the per-repeat ratios (with the median's 95 % confidence interval, and their min/max), plus the ratio of the fastest
repeats.

Usage::

    se-plugins benchmark --model se_plugin_resnet50 --compare seresnet50 --plain --threads 2
    se-plugins benchmark --model se_plugin_resnet50 --channels-last --compile --mode infer --json out.json
    python -m se_plugins.benchmark --task segmentation --model se_plugin_resnet18 --image-size 256
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .atomic import atomic_write_text
from .errors import ConfigError
from .insert import SEResidualBlock, add_se, se_modules, set_se_fused
from .models import PREFIX
from .steady_heap import steady_heap

TASKS = ("classification", "detection", "segmentation")
MODES = ("infer", "train")
HEAPS = ("steady", "as-is")
TORCHVISION = "torchvision."  # --model torchvision.NAME: torchvision's classification model NAME
# SE modules of other libraries (timm's seresnet*, torchvision's) whose pool + scale work is counted too.
_FOREIGN_SE = ("SEModule", "EffectiveSEModule", "SqueezeExcite", "SqueezeExcitation")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    a = parser.add_argument
    a(
        "--model",
        default="se_plugin_resnet50",
        help="SE model: a timm name (default se_plugin_resnet50); classification also takes torchvision's models "
        "as torchvision.NAME, and se_plugin_torchvision.NAME for add_se on it (e.g. se_plugin_torchvision.googlenet); "
        "detection also takes a se_plugins.detection builder name (fasterrcnn_se_resnet50_fpn)",
    )
    a("--base", default=None, help="baseline model (default: --model without 'se_plugin_' / '_se')")
    a("--compare", nargs="+", default=[], metavar="NAME", help="extra models in the same run (e.g. seresnet50)")
    a("--plain", action="store_true", help="also time --model with the plain (unfused) SE implementation")
    a("--task", default="classification", choices=TASKS)
    a("--mode", default="both", choices=(*MODES, "both"), help="inference, training step, or both")
    a("--batch-size", type=int, default=8)
    a("--image-size", type=int, default=224)
    a("--num-classes", type=int, default=None, help="default: 1000 / 91 / 21 by task")
    a("--channels-last", action="store_true", help="model and input in channels_last memory format")
    a("--compile", action="store_true", help="torch.compile every model (inductor)")
    a(
        "--freezing",
        action="store_true",
        help="with --compile: inductor freezing (folds BatchNorm into the convs; inference only)",
    )
    a("--amp", action="store_true", help="autocast: float16 on CUDA (with GradScaler), bfloat16 on CPU")
    a("--device", default="auto", choices=("auto", "cpu", "cuda"))
    a("--warmup", type=int, default=2, help="untimed steps per model and mode (the first one compiles)")
    a("--repeats", type=int, default=10, help="interleaved repeats (each times every model)")
    a("--iters", type=int, default=2, help="steps per model per repeat")
    a("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    a("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    a(
        "--heap",
        default="steady",
        choices=HEAPS,
        help="steady (default): glibc keeps freed memory for the rest of the process, so timed steps do not "
        "page-fault at a rate set by the heap's history; as-is: the C library's defaults, as in a user's process",
    )
    a("--seed", type=int, default=0)
    a("--json", default=None, metavar="OUT.json", help="write the results here (atomically)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m se_plugins.benchmark``: parse ``argv``, run, return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m se_plugins.benchmark", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


# ---------------------------------------------------------------------------------------------------- models
@dataclass
class Entry:
    """One benchmarked model."""

    name: str
    role: str  # base | se | se_plain | compare
    model: nn.Module
    runner: nn.Module | None = None  # the (possibly compiled) module that is timed
    info: dict[str, Any] = field(default_factory=dict)


def _default_base(task: str, model: str) -> str:
    if task == "detection" and model.startswith("fasterrcnn_"):
        return model.replace("_se_", "_")
    return model.removeprefix(PREFIX)


def _build(task: str, name: str, num_classes: int, image_size: int) -> nn.Module:
    try:
        if task == "classification" and name.removeprefix(PREFIX).startswith(TORCHVISION):
            return _build_torchvision(name, num_classes)
        if task == "classification":  # SE with the paper's random init: gates spread like a trained model's
            se_init = {"se_init": "random"} if name.startswith(PREFIX) else {}
            return timm.create_model(name, pretrained=False, num_classes=num_classes, **se_init)
        if task == "segmentation":
            import segmentation_models_pytorch as smp

            return smp.Unet(f"tu-{name}", encoder_weights=None, classes=num_classes)
        return _build_detector(name, num_classes, image_size)
    except RuntimeError as e:
        if "Unknown model" in str(e) or "Invalid model" in str(e):
            raise ConfigError(f"--model/--base/--compare: unknown timm model {name!r}") from None
        raise


def _build_torchvision(name: str, num_classes: int) -> nn.Module:
    """``torchvision.NAME``: torchvision's classification builder; ``se_plugin_torchvision.NAME``: ``add_se`` on it
    with the paper's random init (the families without a timm twin: GoogLeNet, ShuffleNetV2)."""
    import torchvision

    builder = name.removeprefix(PREFIX).removeprefix(TORCHVISION)
    if builder not in torchvision.models.list_models(torchvision.models):
        raise ConfigError(f"--model/--base/--compare: {name!r}: torchvision has no classification model {builder!r}")
    # GoogLeNet and Inception-v3: no auxiliary heads, so the training step's output is the logits alone
    aux = {"aux_logits": False, "init_weights": True} if builder in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(builder, weights=None, num_classes=num_classes, **aux)
    return add_se(model, init="random") if name.startswith(PREFIX) else model


def _build_detector(name: str, num_classes: int, image_size: int) -> nn.Module:
    import torchvision.models.detection as tv_detection

    # No resizing, and no RPN NMS: every model gets the same number of proposals whatever its (random) weights.
    size = {"min_size": image_size, "max_size": image_size, "rpn_nms_thresh": 1.0}
    if name.startswith("fasterrcnn_") and hasattr(tv_detection, name):
        return getattr(tv_detection, name)(weights=None, weights_backbone=None, num_classes=num_classes, **size)
    from . import detection  # imported lazily: only this task needs it

    if name.startswith("fasterrcnn_"):
        if not hasattr(detection, name):
            raise ConfigError(f"--model: {name!r} is neither a torchvision nor a se_plugins.detection builder")
        return getattr(detection, name)(weights_backbone=None, num_classes=num_classes, **size)
    return detection.fasterrcnn_timm_fpn(name, num_classes=num_classes, **size)


def _make_entries(args: argparse.Namespace, num_classes: int) -> list[Entry]:
    names = [("base", args.base or _default_base(args.task, args.model)), ("se", args.model)]
    names += [("compare", n) for n in args.compare]
    entries = []
    for role, name in names:
        torch.manual_seed(args.seed)
        entries.append(Entry(name, role, _build(args.task, name, num_classes, args.image_size)))
        if role == "se" and args.plain:
            if not any(isinstance(m, SEResidualBlock) for m in entries[-1].model.modules()):
                raise ConfigError(f"--plain: {name!r} has no se_plugins SE block to switch to the plain form")
            plain = set_se_fused(copy.deepcopy(entries[-1].model), False)
            entries.append(Entry(f"{name} (plain)", "se_plain", plain))
    seen = [e.name for e in entries]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"--model/--base/--compare: each model only once, got {seen}")
    return entries


# ---------------------------------------------------------------------------------------------------- inputs
def _inputs(args: argparse.Namespace, device: torch.device, num_classes: int) -> tuple[Any, Any]:
    """The (input, target) of one step, deterministic."""
    g = torch.Generator().manual_seed(args.seed)
    n, s = args.batch_size, args.image_size
    images = torch.rand(n, 3, s, s, generator=g)
    if args.task == "classification":
        return _to(images, device, args.channels_last), torch.randint(0, num_classes, (n,), generator=g).to(device)
    if args.task == "segmentation":
        target = torch.randint(0, num_classes, (n, s, s), generator=g).to(device)
        return _to(images, device, args.channels_last), target
    targets = []
    for _ in range(n):
        xy = torch.rand(2, 2, generator=g) * s * 0.5
        wh = torch.rand(2, 2, generator=g) * s * 0.4 + s * 0.1
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, num_classes, (2,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return [img.to(device) for img in images], targets


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ---------------------------------------------------------------------------------------------------- counting
def count_flops(model: nn.Module, x: Any) -> int:
    """FLOPs of one inference forward (torch.utils.flop_counter: convolutions and matmuls)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def se_pool_scale_flops(model: nn.Module, x: Any) -> tuple[int, int]:
    """``(number of SE sites, pool + scale work of one inference forward)``: 2 * N*C*H*W per SE application.

    Counts the elementwise work FlopCounterMode leaves out: the global average pool (one add per element) and the
    channel scale (one multiply per element) of every SE, ours and other libraries'. Counted on the plain form (a
    copy, ``set_se_fused(copy, False)``), where every SE is one module call on the tensor it scales -- the block
    output, a residual branch or, in the slot families, the expanded channels inside the block: the same work as
    the fused form's.
    """
    plain = set_se_fused(copy.deepcopy(model), False).eval()
    se = {id(m): m for m in se_modules(plain).values()}
    se.update({id(m): m for m in plain.modules() if type(m).__name__ in _FOREIGN_SE})
    elements: list[int] = []
    handles = [m.register_forward_pre_hook(lambda mod, inp: elements.append(inp[0].numel())) for m in se.values()]
    try:
        with torch.no_grad():
            plain(x)
    finally:
        for h in handles:
            h.remove()
    return len(elements), 2 * sum(elements)


# ---------------------------------------------------------------------------------------------------- steps
def _autocast(args: argparse.Namespace, device: torch.device) -> contextlib.AbstractContextManager:
    if not args.amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def _loss(task: str, out: Any, target: Any) -> torch.Tensor:
    if task == "detection":
        return sum(out.values())
    return F.cross_entropy(out.float(), target)


def _make_step(entry: Entry, mode: str, args: argparse.Namespace, device: torch.device, data: tuple) -> Callable:
    """A closure running one inference or training step of ``entry``."""
    model, runner = entry.model, entry.runner
    x, target = data
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), _autocast(args, device):
                runner(x)

        return infer
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(args, device):
            out = runner(x, target) if args.task == "detection" else runner(x)
            loss = _loss(args.task, out, target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return train


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_page_faults() -> int | None:
    """The process's minor page faults so far (``getrusage``; None where the platform has no ``resource``)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(step: Callable, iters: int, device: torch.device) -> tuple[float, float, float | None]:
    """Wall-clock and process CPU seconds and minor page faults per step, averaged over ``iters`` back-to-back
    steps (faults None where they cannot be counted)."""
    _sync(device)
    f0 = minor_page_faults()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    t1, c1 = time.perf_counter(), time.process_time()
    f1 = minor_page_faults()
    faults = None if f0 is None or f1 is None else (f1 - f0) / iters
    return (t1 - t0) / iters, (c1 - c0) / iters, faults


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Keep the profiler's native log lines out of the output: they go to file descriptor 2, not ``sys.stderr``.

    (``USDT ... profiler_start/stop``, an allocator warning, and ``ERROR ... gpuGetDeviceCount failed`` on a machine
    without a GPU: nothing is wrong, and the benchmark's output is its table.)
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _cuda_home_warning_silenced(device: torch.device) -> Iterator[None]:
    """On CPU, keep ``torch.utils.cpp_extension``'s import-time ``No CUDA runtime is found, using CUDA_HOME=...``
    out of the output: inductor imports it to compile for the CPU, and a CUDA build of torch on a machine with a
    CUDA toolkit but no GPU warns about a runtime the CPU benchmark never uses."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    if device.type == "cpu":
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def peak_memory_bytes(step: Callable, device: torch.device) -> int:
    """Peak memory allocated by torch during one ``step`` above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the running "Total Allocated" of the torch.profiler memory
    events (every CPU tensor allocation and free during the step). Measure each model once, after steps run outside
    the profiler (as :func:`run` does): a profiling session also counts the frees of tensors allocated in an earlier
    session (e.g. the previous step's gradients, freed by ``zero_grad``), so a repeated call on one model starts
    from another baseline (seen: 78 MiB, then 27 MiB for the same HRNet step).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    mem = sorted(
        (e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0),
        key=lambda e: e["ts"],
    )
    if not mem:
        return 0
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in mem) - start)


# ---------------------------------------------------------------------------------------------------- statistics
def summarize(times: Sequence[float], batch_size: int) -> dict[str, float]:
    """Latency statistics (ms) of per-step times (s) and the throughput at the median."""
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    med = statistics.median(times)
    return {
        "median_ms": med * 1e3,
        "q25_ms": q[0] * 1e3,
        "q75_ms": q[2] * 1e3,
        "iqr_ms": (q[2] - q[0]) * 1e3,
        "min_ms": min(times) * 1e3,
        "throughput_img_s": batch_size / med,
    }


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics ``(x_(k), x_(n+1-k))`` with the
    largest ``k`` for which the interval covers the median with probability >= ``level`` (binomial(n, 1/2) tails);
    ``(min, max)`` when ``n`` is too small for ``level`` (n <= 5 at 95 %)."""
    xs, n = sorted(values), len(values)
    k, below = 0, 0.0  # below = P(Binomial(n, 1/2) < k + 1), the probability that x_(k+1) is above the median
    while k < n // 2:
        below += math.comb(n, k) / 2**n
        if 1 - 2 * below < level:
            break
        k += 1
    k = max(k, 1)
    return xs[k - 1], xs[n - k]


def ratios(times: Sequence[float], base_times: Sequence[float]) -> dict[str, dict[str, float]]:
    """Model/base ratios from per-repeat times: median (with its 95 % confidence interval), min and max of the
    per-repeat ratios, and the ratio of the minima."""
    lat = [t / b for t, b in zip(times, base_times, strict=True)]
    thr = [b / t for t, b in zip(times, base_times, strict=True)]

    def stats(values: list[float], of_min: float) -> dict[str, float]:
        low, high = median_interval(values)
        return {"median": statistics.median(values), "ci95_low": low, "ci95_high": high, "min": min(values),
                "max": max(values), "of_min": of_min}  # fmt: skip

    return {
        "latency": stats(lat, min(times) / min(base_times)),
        "throughput": stats(thr, min(base_times) / min(times)),
    }


# ---------------------------------------------------------------------------------------------------- run
def _check(args: argparse.Namespace) -> torch.device:
    for key in ("batch_size", "image_size", "repeats", "iters"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    if args.task == "segmentation" and args.image_size % 32:
        raise ConfigError(f"--image-size must be a multiple of 32 for segmentation, got {args.image_size}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.freezing and not args.compile:
        raise ConfigError("--freezing needs --compile")
    return torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )


def _environment(device: torch.device) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_start"] = os.getloadavg()
    if os.environ.get("GLIBC_TUNABLES"):  # e.g. the allocator's trimming off: changes which steps page-fault
        env["glibc_tunables"] = os.environ["GLIBC_TUNABLES"]
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by ``args`` (see :func:`add_arguments`); print a table, return the results.

    Returns:
        The results (also written to ``args.json`` when given): config, environment, per model params/FLOPs/SE
        pool+scale work, per mode and model the per-repeat times and their statistics, and the ratios to the base.

    Raises:
        ConfigError: bad options (a ``ValueError``).
    """
    device = _check(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    heap = "as-is"
    if args.heap == "steady":
        heap = steady_heap() or "as-is (steady needs glibc's mallopt)"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.task == "detection":
        try:
            from . import detection  # noqa: F401
        except ImportError as e:
            msg = f"detection benchmark skipped: se_plugins.detection is not available ({e})"
            print(msg, file=sys.stderr)
            return {"skipped": msg}
    inductor_options = contextlib.nullcontext()
    if args.freezing:
        import torch._inductor.config as inductor_config

        inductor_options = inductor_config.patch(freezing=True)
    with inductor_options, _cuda_home_warning_silenced(device):
        result = _measure(args, device)
    result["environment"]["heap"] = heap
    print(format_table(result))
    if args.json:
        write_json_atomic(args.json, result)
        print(f"results written to {args.json}")
    return result


def _measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    num_classes = args.num_classes or {"classification": 1000, "detection": 91, "segmentation": 21}[args.task]
    entries = _make_entries(args, num_classes)
    data = _inputs(args, device, num_classes)
    for e in entries:
        e.model.to(device)
        if args.channels_last:
            e.model.to(memory_format=torch.channels_last)
        e.info["params"] = sum(p.numel() for p in e.model.parameters())
        e.info["flops"] = count_flops(e.model, data[0])
        e.info["se_sites"], e.info["se_pool_scale_flops"] = se_pool_scale_flops(e.model, data[0])
        e.runner = torch.compile(e.model) if args.compile else e.model
    result: dict[str, Any] = {
        "config": dict(vars(args)),
        "environment": _environment(device),
        "device": str(device),
        "memory_method": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "torch.profiler memory events (CPU allocator), peak above the allocations before the step",
        "models": {e.name: {"role": e.role, **e.info} for e in entries},
        "results": {},
        "ratios": {},
    }
    if args.plain:
        result["plain_vs_fused_max_abs_diff"] = _plain_vs_fused(entries, data[0])
    base = next(e.name for e in entries if e.role == "base")
    for mode in MODES if args.mode == "both" else (args.mode,):
        res = result["results"][mode] = _run_mode(entries, mode, args, device, data)
        result["ratios"][mode] = {}
        for e in entries[1:]:
            ratio = result["ratios"][mode][e.name] = ratios(res[e.name]["times_s"], res[base]["times_s"])
            if device.type == "cpu":
                ratio["cpu_time"] = ratios(res[e.name]["cpu_times_s"], res[base]["cpu_times_s"])["latency"]
    if hasattr(os, "getloadavg"):
        result["environment"]["loadavg_end"] = os.getloadavg()
    return result


def _plain_vs_fused(entries: list[Entry], x: Any) -> float:
    fused = next(e.model for e in entries if e.role == "se")
    plain = next(e.model for e in entries if e.role == "se_plain")
    with torch.no_grad():
        a, b = fused.eval()(x), plain.eval()(x)
    flat = [(u.float() - v.float()).abs().max().item() for u, v in zip(_tensors(a), _tensors(b), strict=True)]
    return max(flat, default=0.0)


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _tensors(v)]
    return []


def _run_mode(
    entries: list[Entry], mode: str, args: argparse.Namespace, device: torch.device, data: tuple
) -> dict[str, Any]:
    steps = {e.name: _make_step(e, mode, args, device, data) for e in entries}
    out: dict[str, dict[str, Any]] = {e.name: {} for e in entries}
    for e in entries:
        t0 = time.perf_counter()
        for i in range(args.warmup):
            steps[e.name]()
            if i == 0:
                _sync(device)
                out[e.name]["first_step_s"] = time.perf_counter() - t0  # includes compilation with --compile
    times: dict[str, list[float]] = {e.name: [] for e in entries}
    cpu_times: dict[str, list[float]] = {e.name: [] for e in entries}
    faults: dict[str, list[float | None]] = {e.name: [] for e in entries}
    for r in range(args.repeats):
        k = r % len(entries)
        for e in entries[k:] + entries[:k]:
            wall, cpu, fault = _timed(steps[e.name], args.iters, device)
            times[e.name].append(wall)
            cpu_times[e.name].append(cpu)
            faults[e.name].append(fault)
    for e in entries:
        out[e.name].update(summarize(times[e.name], args.batch_size), times_s=times[e.name])
        if device.type == "cpu":  # CPU time of the process: far less sensitive than wall time to other load
            out[e.name]["cpu_times_s"] = cpu_times[e.name]
            out[e.name]["cpu_median_ms"] = statistics.median(cpu_times[e.name]) * 1e3
            if None not in faults[e.name]:  # fresh pages the allocator maps: a heap effect, not the model's
                out[e.name]["page_faults_per_step"] = faults[e.name]
                out[e.name]["page_faults_median"] = statistics.median(faults[e.name])
        if args.memory:
            out[e.name]["peak_memory_mib"] = peak_memory_bytes(steps[e.name], device) / 2**20
    return out


# ---------------------------------------------------------------------------------------------------- output
def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the results."""
    cfg, env = result["config"], result["environment"]
    flags = [f for f in ("channels_last", "compile", "freezing", "amp") if cfg.get(f)] or ["eager"]
    hardware = env["cpu"] if result["device"] == "cpu" else env["device_name"]
    lines = [
        f"{cfg['task']} | {result['device']} ({hardware}, {env['threads']} threads) | batch "
        f"{cfg['batch_size']} | {cfg['image_size']}px | {'+'.join(flags)} | {cfg['repeats']} repeats x "
        f"{cfg['iters']} iters | torch {env['torch']}",
    ]
    if "loadavg_start" in env and "loadavg_end" in env:  # other work on the machine makes the timings noisy
        lines[0] += f" | load avg {env['loadavg_start'][0]:.1f} -> {env['loadavg_end'][0]:.1f}"
    if "heap" in env:
        lines[0] += f" | heap {env['heap']}"
    if "glibc_tunables" in env:
        lines[0] += f" | GLIBC_TUNABLES={env['glibc_tunables']}"
    header = ("model", "params", "GFLOPs", "SE p+s MFLOPs", "mode", "median ms", "IQR", "min", "img/s", "peak MiB")
    header += ("faults/step", "ratio med [95% CI]", "of min", "cpu-time ratio")
    rows = []
    for mode, res in result["results"].items():
        for name, r in res.items():
            info, ratio = result["models"][name], result["ratios"][mode].get(name)
            row = [name, f"{info['params'] / 1e6:.2f}M", f"{info['flops'] / 1e9:.2f}"]
            row.append(f"{info['se_pool_scale_flops'] / 1e6:.3g}" if info["se_sites"] else "-")
            row += [mode, f"{r['median_ms']:.1f}", f"{r['iqr_ms']:.1f}", f"{r['min_ms']:.1f}"]
            row.append(f"{r['throughput_img_s']:.1f}")
            row.append(f"{r['peak_memory_mib']:.0f}" if "peak_memory_mib" in r else "-")
            row.append(f"{r['page_faults_median']:.0f}" if "page_faults_median" in r else "-")
            if ratio is None:
                row += ["1 (base)", "", ""]
            else:
                lat = ratio["latency"]
                row += [f"{lat['median']:.3f} [{lat['ci95_low']:.3f}, {lat['ci95_high']:.3f}]", f"{lat['of_min']:.3f}"]
                row.append(f"{ratio['cpu_time']['median']:.3f}" if "cpu_time" in ratio else "")
            rows.append(row)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:{'<' if i in (0, 4) else '>'}{w}}}" for i, w in enumerate(widths))
    lines += [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    lines.append(
        "GFLOPs: conv/matmul per forward (FlopCounterMode, includes the SE's FC layers). SE p+s: the SE's pool + "
        "scale on top (2*N*C*H*W per SE block).\nratio: latency model/base, median of the per-repeat ratios [its 95% "
        "confidence interval; min/max with <= 5 repeats] (throughput ratio = 1/ratio); of min: of the fastest repeats; "
        "cpu-time: of the process CPU time.\nfaults/step: the process's minor page faults per step (median; CPU): "
        "fresh pages the allocator maps. Where one model faults far more than another, their ratio reflects the "
        "heap's state more than the models (see README, Performance); --heap steady (default) keeps them near 0."
    )
    if "plain_vs_fused_max_abs_diff" in result:
        lines.append(f"plain vs fused SE outputs: max |diff| = {result['plain_vs_fused_max_abs_diff']:.3g}")
    return "\n".join(lines)


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


if __name__ == "__main__":
    sys.exit(main())
