"""Trainer mechanics on the toy task (tests/toy_task.py): learning, outputs, LR schedule, exact resume,
atomic/weights-only checkpoints, NaN stop, and DDP with two CPU processes (gloo)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from toy_task import ToyNet

from se_plugins.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from se_plugins.engine.config import load_config
from se_plugins.engine.logging import read_metrics
from se_plugins.engine.trainer import NonFiniteLossError, Trainer, build_optimizer, lr_lambda
from se_plugins.errors import CheckpointError

TESTS = Path(__file__).resolve().parent
TOY_YAML = """\
task: toy_task:ToyTask
seed: 3
device: cpu
data: {num_workers: 0}
train:
  epochs: 4
  batch_size: 8
  lr: 0.05
  warmup_iters: 4
  warmup_factor: 0.1
  milestones: [3]
  log_every: 4
  num_vis: 0
  tensorboard: false
eval: {batch_size: 16}
"""


def toy_cfg(tmp_path: Path, *overrides: str, name: str = "run"):
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_YAML)
    return load_config(path, [f"output_dir={tmp_path / name}", *overrides])


def assert_identical(a, b, where: str) -> None:
    """Nested dicts/lists of tensors and plain values are exactly equal (torch.equal for tensors)."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def strip_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_fit_learns_and_writes_all_outputs(tmp_path):
    cfg = toy_cfg(tmp_path, "train.num_vis=3", "train.tensorboard=true")
    out = Path(cfg.output_dir)
    metrics = Trainer(cfg).fit()

    records = read_metrics(out / "metrics.jsonl")
    epochs = [r for r in records if r["type"] == "epoch"]
    evals = [r for r in records if r["type"] == "eval"]
    trains = [r for r in records if r["type"] == "train"]
    # 64 items / batch 8 = 8 iterations per epoch, logged every 4; evaluated after every epoch.
    assert [(r["epoch"], r["iter"], r["step"]) for r in trains] == [
        (e, i, (e - 1) * 8 + i) for e in (1, 2, 3, 4) for i in (4, 8)
    ]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4] and [r["step"] for r in epochs] == [8, 16, 24, 32]
    assert [r["epoch"] for r in evals] == [1, 2, 3, 4]
    assert set(trains[0]) == {"type", "epoch", "iter", "step", "lr", "loss", "loss_ce", "loss_l2", "time"}
    # The logged lr is that of the record's last iteration: 0.05 * warmup * decay (milestone: epoch 3).
    assert trains[0]["lr"] == pytest.approx(0.05 * (0.1 * (1 - 3 / 4) + 3 / 4))  # step index 3 (warmup)
    assert trains[1]["lr"] == pytest.approx(0.05)
    assert trains[-1]["lr"] == pytest.approx(0.005)
    # It learns: loss falls a lot, accuracy well above chance (0.25).
    assert epochs[-1]["loss"] < 0.5 * epochs[0]["loss"]
    assert metrics["accuracy"] >= 0.8
    assert metrics == {k: v for k, v in evals[-1].items() if k not in ("type", "epoch", "step")}

    # Checkpoints load with weights_only=True and hold what they promise.
    last = torch.load(out / "last.pth", weights_only=True)
    assert (last["epoch"], last["step"], last["metrics"]) == (4, 32, metrics)
    assert {"optimizer", "scheduler", "scaler", "rng", "model", "config"} <= set(last)
    best_value = max(r["accuracy"] for r in evals)
    best = torch.load(out / "best.pth", weights_only=True)
    assert best["best_metric"] == last["best_metric"] == best_value
    assert best["best_epoch"] == next(r["epoch"] for r in evals if r["accuracy"] == best_value)
    assert "optimizer" not in best
    # evaluate() on best.pth reproduces that epoch's metrics.
    best_record = next(r for r in evals if r["epoch"] == best["best_epoch"])
    again = Trainer(cfg).evaluate(out / "best.pth")
    assert again == pytest.approx({k: best_record[k] for k in again})

    assert OmegaConf.to_container(load_config(out / "config.yaml")) == OmegaConf.to_container(cfg)
    with Image.open(out / "curves.png") as im:
        assert im.format == "PNG" and im.size == (1000, 400)
    assert len(list((out / "predictions").glob("*.png"))) == 3
    assert not list(out.glob(".*.tmp"))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("eval/accuracy")] == pytest.approx([r["accuracy"] for r in evals])
    assert [e.step for e in events.Scalars("epoch/loss")] == [8, 16, 24, 32]


def _factors(cfg, iters_per_epoch, steps):
    return [lr_lambda(cfg.train, iters_per_epoch)(s) for s in steps]


def test_lr_schedule_warmup_multistep(tmp_path):
    cfg = toy_cfg(tmp_path, "train.warmup_iters=4", "train.warmup_factor=0.1", "train.milestones=[2,3]")
    # 5 iterations per epoch: milestones at steps 10 and 15; warmup 0.1 -> 1 over steps 0..4.
    got = _factors(cfg, 5, [0, 1, 2, 4, 9, 10, 14, 15, 19, 100])
    expected = [0.1, 0.325, 0.55, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.01]
    assert got == pytest.approx(expected)

    # The same values drive the optimizer's lr through LambdaLR, step by step.
    model = ToyNet()
    optimizer = build_optimizer(model, cfg.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train, 5))
    seen = []
    for _ in range(16):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.05 * 0.1) and seen[2] == pytest.approx(0.05 * 0.55)
    assert seen[9] == pytest.approx(0.05) and seen[10] == pytest.approx(0.005) and seen[15] == pytest.approx(0.0005)


def test_lr_schedule_warmup_cosine(tmp_path):
    cfg = toy_cfg(tmp_path, "train.scheduler=cosine", "train.min_lr_factor=0.1", "train.warmup_iters=4")
    # 4 epochs x 5 iterations = 20 steps: f = 0.1 + 0.45 * (1 + cos(pi * s / 20)), times warmup below step 4.
    got = _factors(cfg, 5, [0, 2, 5, 10, 15, 20, 30])
    expected = [
        0.1 * 1.0,  # warmup 0.1, cosine at its start (1.0)
        (0.1 * 0.5 + 0.5) * (0.1 + 0.45 * (1 + math.cos(math.pi / 10))),
        0.1 + 0.45 * (1 + math.sqrt(0.5)),
        0.55,
        0.1 + 0.45 * (1 - math.sqrt(0.5)),
        0.1,
        0.1,
    ]
    assert got == pytest.approx(expected)


def test_param_groups_exclude_norm_and_bias_from_weight_decay(tmp_path):
    model = ToyNet()
    optimizer = build_optimizer(model, toy_cfg(tmp_path, "train.weight_decay=0.01").train)
    decay, no_decay = optimizer.param_groups
    assert {id(p) for p in decay["params"]} == {
        id(model.conv1.weight),
        id(model.conv2.weight),
        id(model.fc.weight),
    }
    assert {id(p) for p in no_decay["params"]} == {
        id(model.bn1.weight),
        id(model.bn1.bias),
        id(model.conv2.bias),
        id(model.fc.bias),
    }
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    cfg = toy_cfg(tmp_path, "train.weight_decay=0.01", "train.norm_weight_decay=null", "train.optimizer=adamw")
    optimizer = build_optimizer(model, cfg.train)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, workers):
    """Crash in epoch 3, resume from last.pth (epoch 2) in a new Trainer: bit-identical to one run."""
    common = [
        "train.scheduler=cosine",
        "train.clip_grad_norm=1.0",
        "train.log_every=2",
        f"data.num_workers={workers}",
        "data.persistent_workers=false",
    ]
    straight = toy_cfg(tmp_path, *common, name="straight")
    Trainer(straight).fit()

    crashing = toy_cfg(tmp_path, *common, "model.kwargs.crash_at_call=19", name="resumed")  # epoch 3, iter 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(crashing).fit()
    out = Path(crashing.output_dir)
    assert load_checkpoint(out / "last.pth")["epoch"] == 2
    # The same config (the crash counter restarts at 0 in a new Trainer and is not reached again): a changed
    # model.kwargs would be refused (test_resume_refuses_config_changes).
    Trainer(toy_cfg(tmp_path, *common, "model.kwargs.crash_at_call=19", name="resumed")).fit(resume=out / "last.pth")

    a = load_checkpoint(Path(straight.output_dir) / "last.pth")
    b = load_checkpoint(out / "last.pth")
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "step", "best_metric", "metrics"):
        assert_identical(a[key], b[key], key)
    # The crashed epoch's partial records were dropped on resume: the logs match too.
    assert strip_time(read_metrics(Path(straight.output_dir) / "metrics.jsonl")) == strip_time(
        read_metrics(out / "metrics.jsonl")
    )


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = toy_cfg(tmp_path, "model.kwargs.nan_at_call=11")  # epoch 2, iteration 3
    out = Path(cfg.output_dir)
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg).fit()
    message = str(info.value)
    assert message.startswith("non-finite loss at epoch 2 iter 3 (loss=nan, loss_ce=nan, loss_l2=")
    assert message.endswith(f"; last good checkpoint: {out / 'last.pth'}")
    last = load_checkpoint(out / "last.pth")
    assert (last["epoch"], last["step"]) == (1, 8)
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    record = read_metrics(out / "metrics.jsonl")[-1]
    assert (record["type"], record["epoch"], record["iter"], record["loss"]) == ("nonfinite", 2, 3, None)  # strict JSON
    assert not list(out.glob(".*.tmp"))


def test_checkpoint_save_is_atomic(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"weights": torch.arange(4.0)}, path)
    before = path.read_bytes()
    # torch.save fails half-way (a lambda cannot be pickled after the tensor was written): old file intact.
    with pytest.raises(Exception, match="lambda|pickle"):
        save_checkpoint({"weights": torch.zeros(1000), "bad": lambda: 0}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(4.0))


def test_load_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pth: checkpoint not found$"):
        load_checkpoint(tmp_path / "missing.pth")
    good = save_checkpoint({"model": ToyNet().state_dict()}, tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: corrupt or not a PyTorch checkpoint") as info:
        load_checkpoint(truncated)
    assert "\n" not in str(info.value)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {}, "path": Path("x")}, unsafe)  # arbitrary objects need weights_only=False
    with pytest.raises(CheckpointError, match=r"unsafe\.pth: not loadable with weights_only=True"):
        load_checkpoint(unsafe)
    model = ToyNet()
    state = {k: v for k, v in ToyNet().state_dict().items() if k != "fc.bias"}
    state["fc.weight"] = torch.zeros(5, 128)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(e\.g\. fc\.bias\); 1 shape mismatches"):
        load_model_weights(model, {"model": state})
    weights = ToyNet().state_dict()
    load_model_weights(model, {f"module.{k}": v for k, v in weights.items()})  # DDP prefix is stripped
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_ddp_two_cpu_processes_keep_replicas_identical(tmp_path):
    """torchrun --nproc_per_node=2 (gloo) through the CLI: both ranks end with the weights in last.pth."""
    cfg_path = tmp_path / "toy.yaml"
    cfg_path.write_text(TOY_YAML)
    out, dump = tmp_path / "ddp", tmp_path / "dump"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "se_plugins.cli", "train", str(cfg_path),
        "--set", f"output_dir={out}", "train.epochs=2", f"model.kwargs.dump_dir={dump}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    last = load_checkpoint(out / "last.pth")
    assert (last["epoch"], last["step"], last["world_size"], len(last["rng"])) == (
        2,
        8,
        2,
        2,
    )  # 64 items / 2 / 8
    rank0 = torch.load(dump / "rank0.pt", weights_only=True)
    rank1 = torch.load(dump / "rank1.pt", weights_only=True)
    params = [name for name, _ in ToyNet().named_parameters()]
    for name in params:  # DDP keeps parameters identical; rank 0 saved them
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.equal(rank0[name], last["model"][name]), name
    assert len([r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "eval"]) == 2  # rank 0 only wrote
