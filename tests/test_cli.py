"""The se-plugins CLI: help, one-line errors with exit code 2, train/eval round trip, delegated commands."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from se_plugins.cli import main
from se_plugins.engine.logging import read_metrics

REPO = Path(__file__).resolve().parents[1]
TOY_YAML = """\
task: toy_task:ToyTask
device: cpu
data: {num_workers: 0}
train: {epochs: 2, batch_size: 8, lr: 0.05, warmup_iters: 2, log_every: 4, num_vis: 1, tensorboard: false}
eval: {batch_size: 16}
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("se-plugins: error: "), stderr
    return lines[0]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    for command in ("train", "eval", "eval-results", "make-shapes", "benchmark"):
        assert command in printed


def test_python_m_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    """A real ``python -m se_plugins.cli`` process: one stderr line, no traceback, exit code 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: abc\n")
    proc = run_cli("-m", "se_plugins.cli", "train", str(bad))
    assert proc.returncode == 2
    assert one_error_line(proc.stderr) == (
        f"se-plugins: error: {bad}: train.lr: Value 'abc' of type 'str' could not be converted to Float"
    )
    assert proc.stdout == ""


@pytest.mark.parametrize("tool", ["train", "eval", "benchmark"])
def test_tools_scripts_wrap_the_cli(tool, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"tools/{tool}.py", "--help"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends the repo root
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "tools" / f"{tool}.py"), run_name="__main__")
    assert info.value.code == 0
    assert f"usage: se-plugins {tool}" in capsys.readouterr().out


def test_bad_input_errors_in_process(tmp_path, capsys):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(TOY_YAML)
    assert main(["train", str(cfg), "--set", "train.epochs=zero"]) == 2
    assert "--set train.epochs=zero: train.epochs: Value 'zero'" in one_error_line(capsys.readouterr().err)
    assert main(["train", str(cfg), "--set", "task=nope"]) == 2
    assert "task: 'nope' is not one of detection, segmentation" in one_error_line(capsys.readouterr().err)
    missing = tmp_path / "missing.pth"
    assert main(["eval", str(cfg), "--checkpoint", str(missing), "--set", f"output_dir={tmp_path}"]) == 2
    assert one_error_line(capsys.readouterr().err) == f"se-plugins: error: {missing}: checkpoint not found"
    with pytest.raises(SystemExit) as info:  # argparse usage errors also exit with 2
        main(["train"])
    assert info.value.code == 2


def test_train_then_eval_round_trip(tmp_path, capsys):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(TOY_YAML)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--set", f"output_dir={out}", "seed=1"]) == 0
    assert "final metrics" in capsys.readouterr().out
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]

    # --resume auto on a finished run trains nothing more and reports the stored metrics.
    assert main(["train", str(cfg), "--set", f"output_dir={out}", "seed=1", "--resume", "auto"]) == 0
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "eval"] == [1, 2]

    assert (
        main(
            [
                "eval",
                str(cfg),
                "--checkpoint",
                str(out / "last.pth"),
                "--set",
                f"output_dir={out}",
                "--vis",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "last.eval.json").read_text())
    assert report["checkpoint"] == str(out / "last.pth")
    assert report["metrics"] == pytest.approx({k: evals[-1][k] for k in ("accuracy", "val_loss")})
    assert f"accuracy  {report['metrics']['accuracy']:.4f}" in printed
    assert len(list((out / "last.eval_predictions").glob("*.png"))) == 2

    custom = tmp_path / "metrics" / "m.json"
    assert main(["eval", str(cfg), "--checkpoint", str(out / "best.pth"), "--out", str(custom)]) == 0
    assert json.loads(custom.read_text())["metrics"]["accuracy"] == max(r["accuracy"] for r in evals)


def test_benchmark_without_its_module_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "se_plugins.benchmark", None)  # as if the module were not installed
    assert main(["benchmark", "--model", "x"]) == 2
    expected = "'benchmark' is not available in this installation (se_plugins.benchmark is missing)"
    assert one_error_line(capsys.readouterr().err) == f"se-plugins: error: {expected}"


def test_make_shapes_is_dispatched(tmp_path, capsys):
    pytest.importorskip("se_plugins.data.shapes")
    out = tmp_path / "shapes"
    assert main(["make-shapes", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "64"]) == 0
    train = json.loads((out / "coco" / "annotations" / "instances_train.json").read_text())
    assert len(train["images"]) == 2
    assert main(["make-shapes", str(out), "--image-size", "8"]) == 2  # the generator's ValueError, one line
    assert "image_size must be at least 32" in one_error_line(capsys.readouterr().err)


def test_eval_results_is_dispatched(tmp_path, capsys):
    pytest.importorskip("se_plugins.engine.evaluation")
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 30], "area": 1200, "iscrowd": 0}
        ],
        "categories": [{"id": 3, "name": "thing"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(
        json.dumps([{"image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 30], "score": 0.9}])
    )
    out = tmp_path / "metrics.json"
    args = [
        "eval-results",
        "--annotations",
        str(tmp_path / "gt.json"),
        "--results",
        str(tmp_path / "dt.json"),
    ]
    assert main([*args, "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["AP50"] == pytest.approx(1.0)  # one perfect detection of the only object
    assert "AP50" in capsys.readouterr().out
