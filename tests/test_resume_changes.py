"""Resuming with a changed config (one line, or applied with --resume-override), stale temp files, strict JSON."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_trainer import toy_cfg

from se_plugins.atomic import remove_stale_temp_files
from se_plugins.cli import main
from se_plugins.engine.checkpoint import load_checkpoint
from se_plugins.engine.logging import read_metrics
from se_plugins.engine.trainer import Trainer, lr_lambda
from se_plugins.errors import CheckpointError

pytestmark = pytest.mark.xdist_group("resume_changes")


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> Path:
    """A finished 2-epoch AdamW run of the toy task (8 steps per epoch); returns its last.pth."""
    root = tmp_path_factory.mktemp("resume")
    cfg = toy_cfg(root, "train.epochs=2", "train.optimizer=adamw", "train.momentum=0.9", name="base")
    Trainer(cfg).fit()
    return Path(cfg.output_dir) / "last.pth"


def test_changed_optimizer_is_one_line(tmp_path, two_epochs):
    cfg = toy_cfg(tmp_path, "train.epochs=3", "train.optimizer=sgd")
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg).fit(resume=two_epochs)
    assert str(err.value) == (
        f"{two_epochs}: train.optimizer changed (adamw -> sgd): the checkpoint holds adamw state, which sgd "
        "cannot continue; resume with train.optimizer=adamw, or start a new run"
    )


def test_changed_lr_is_refused_and_listed(tmp_path, two_epochs, caplog):
    cfg = toy_cfg(tmp_path, "train.epochs=3", "train.optimizer=adamw", "train.lr=0.01", "train.milestones=[2]")
    with caplog.at_level(logging.INFO, logger="se_plugins.engine"), pytest.raises(CheckpointError) as err:
        Trainer(cfg).fit(resume=two_epochs)
    assert str(err.value) == (
        f"{two_epochs}: the config differs from the checkpoint's (train.lr: 0.05 -> 0.01; train.milestones: "
        "[3] -> [2]), so the resumed run would not continue the same training; undo the change, or pass "
        "--resume-override to apply it"
    )
    assert caplog.messages[-1] == (
        f"config differs from the checkpoint's ({two_epochs}): output_dir: "
        f"'{two_epochs.parent}' -> '{tmp_path / 'run'}'; train.epochs: 2 -> 3; train.lr: 0.05 -> 0.01; "
        "train.milestones: [3] -> [2]"
    )


def test_resume_override_applies_the_new_schedule(tmp_path, two_epochs):
    cfg = toy_cfg(tmp_path, "train.epochs=3", "train.optimizer=adamw", "train.lr=0.01", "train.weight_decay=0.5")
    Trainer(cfg).fit(resume=two_epochs, resume_override=True)
    records = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if r["type"] == "train"]
    resumed = [r for r in records if r["epoch"] == 3]
    factor = lr_lambda(cfg.train, 8)
    # The LR logged at iteration i of epoch 3 is the new lr at step 16 + i - 1 (milestone 3: x0.1 from step 24).
    assert [r["lr"] for r in resumed] == [0.01 * factor(16 + r["iter"] - 1) for r in resumed]
    state = load_checkpoint(Path(cfg.output_dir) / "last.pth")
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0] and all(g["initial_lr"] == 0.01 for g in groups)
    assert state["scheduler"]["base_lrs"] == [0.01, 0.01] and (state["epoch"], state["step"]) == (3, 24)


def test_more_epochs_are_allowed_and_cli_flag_needs_resume(tmp_path, two_epochs, capsys):
    cfg = toy_cfg(tmp_path, "train.epochs=3", "train.optimizer=adamw")
    Trainer(cfg).fit(resume=two_epochs)
    assert load_checkpoint(Path(cfg.output_dir) / "last.pth")["epoch"] == 3
    yaml_path = tmp_path / "toy.yaml"
    assert main(["train", str(yaml_path), "--set", f"output_dir={tmp_path / 'x'}", "--resume-override"]) == 2
    assert capsys.readouterr().err.strip() == "se-plugins: error: --resume-override needs --resume"


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_stale_temp_files_of_killed_writes_are_removed_on_start(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    stale = [run / f".last.pth.{dead}.0123abcd.tmp", run / f".curves.png.{dead}.ffffffff.tmp"]
    live = run / f".last.pth.{os.getpid()}.00000000.tmp"  # this process: may be being written
    other = [run / "notes.tmp", run / f".last.pth.{dead}.xyz.tmp", run / "last.pth.1.0123abcd.tmp"]  # not ours
    for path in [*stale, live, *other]:
        path.write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="se_plugins.engine"):
        Trainer(toy_cfg(tmp_path, "train.epochs=1")).fit()
    assert not any(p.exists() for p in stale) and live.exists() and all(p.exists() for p in other)
    assert (
        f"removed 2 temporary files of interrupted writes from {run}: .curves.png.{dead}.ffffffff.tmp, "
        f".last.pth.{dead}.0123abcd.tmp" in caplog.messages
    )
    assert remove_stale_temp_files(run) == [] and remove_stale_temp_files(tmp_path / "missing") == []


def test_eval_out_is_strict_json(tmp_path, two_epochs, capsys):
    yaml_path = tmp_path / "toy.yaml"
    toy_cfg(tmp_path)  # writes toy.yaml
    out = tmp_path / "m.json"
    args = ["eval", str(yaml_path), "--checkpoint", str(two_epochs), "--out", str(out)]
    assert main([*args, "--set", "model.kwargs.nan_metric=true", f"output_dir={tmp_path}"]) == 0
    text = out.read_text()
    assert '"undefined": null' in text and "NaN" not in text
    assert json.loads(text)["metrics"]["undefined"] is None
    capsys.readouterr()
