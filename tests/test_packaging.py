"""The built wheel: its file list, its metadata, and the installed package run from outside the repository.

The wheel is built from a copy of the package sources (``python -m build --wheel --no-isolation``, the current
environment's setuptools) and installed with ``pip install --no-deps --target`` into a temporary folder, which
then comes first on ``PYTHONPATH``; the dependencies (torch, ...) are the current environment's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

pytestmark = pytest.mark.xdist_group("wheel")  # one worker builds the wheel once for the whole module


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    # the real layout, symlink included: se_plugins/configs -> ../configs
    shutil.copytree(REPO / "se_plugins", src / "se_plugins", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "configs", src / "configs", ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = out.glob("se_plugins-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(target)]
    done = subprocess.run([*cmd, str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def _run(args: list[str], target: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_holds_package_configs_and_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        configs = sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml"))
        assert len(configs) >= 12
        for rel in configs:
            member = f"se_plugins/configs/{rel.as_posix()}"
            assert member in names, f"{member} is not in the wheel"
            assert zf.read(member) == (REPO / "configs" / rel).read_bytes()
        modules = {p.relative_to(REPO).as_posix() for p in (REPO / "se_plugins").rglob("*.py")}
        assert modules - names == set()
        assert not [n for n in names if n.startswith(("tests/", "configs/", "tools/"))]
        project = _pyproject()["project"]
        dist_info = f"se_plugins-{project['version']}.dist-info"
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert f"\nVersion: {project['version']}\n" in metadata
    assert "se-plugins = se_plugins.cli:main" in entry_points


CLI_PROBE = """
import contextlib, io, json, sys
import se_plugins
from se_plugins.cli import main

def cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse's --version
            rc = e.code
    return [rc, out.getvalue(), err.getvalue()]

print(json.dumps({"file": se_plugins.__file__, "version": se_plugins.__version__, "cli_version": cli("--version"),
                  "list": cli("configs"),
                  "show": cli("configs", "shapes_fasterrcnn_se_r18"), "unknown": cli("train", "shapes_fasterrcnn_se")}))
"""
"""Runs the installed CLI's commands in one process (each interpreter start imports torch: seconds); the console
script itself runs in the training test."""


@pytest.mark.slow
def test_installed_wheel_resolves_configs_from_an_empty_directory(installed: Path, tmp_path: Path):
    version = _pyproject()["project"]["version"]
    probe = _run([sys.executable, "-c", CLI_PROBE], installed, tmp_path)
    assert probe.returncode == 0, probe.stderr[-2000:]
    got = json.loads(probe.stdout.splitlines()[-1])
    assert Path(got["file"]).is_relative_to(installed)  # the wheel's copy, not the repository's
    assert got["version"] == version
    assert got["cli_version"] == [0, f"se-plugins {version}\n", ""]

    rc, listing, _ = got["list"]
    assert rc == 0
    rows = {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:-1]}
    assert rows["shapes_fasterrcnn_se_r18"] == "detection" and rows["shapes_unet_se_r18"] == "segmentation"
    assert str(installed / "se_plugins" / "configs") in listing.splitlines()[-1]

    rc, shown, _ = got["show"]
    assert rc == 0 and shown == (REPO / "configs/detection/shapes_fasterrcnn_se_r18.yaml").read_text(encoding="utf-8")

    rc, _, error = got["unknown"]
    assert rc == 2 and len(error.strip().splitlines()) == 1
    assert "did you mean 'shapes_fasterrcnn_se_r18'?" in error and "shapes_unet_se_r18" in error
    assert list(tmp_path.iterdir()) == []  # nothing written by listing or failing


@pytest.mark.slow
def test_installed_wheel_trains_the_detection_demo_by_name(installed: Path, tmp_path: Path):
    """The README's demo from an empty folder through the console script, shrunk: 8 images of 64 px, one epoch."""
    small = ["data.shapes.num_train=8", "data.shapes.num_val=2", "data.shapes.image_size=64", "model.min_size=64"]
    small += ["model.max_size=64", "train.epochs=1", "train.warmup_iters=1", "train.num_vis=1"]
    small += ["train.tensorboard=false"]
    args = [str(installed / "bin" / "se-plugins"), "train", "shapes_fasterrcnn_se_r18", "--set", *small]
    done = _run(args, installed, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = tmp_path / "runs" / "shapes_fasterrcnn_se_r18"
    assert (tmp_path / "data" / "shapes160" / "shapes.json").is_file()  # the config's relative data.root
    assert (run / "last.pth").is_file() and (run / "config.yaml").is_file()
    assert "AP50" in (run / "metrics.jsonl").read_text()
    assert len(list((run / "predictions").glob("*.png"))) == 1
