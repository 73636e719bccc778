"""The version check at import: the oldest libraries se_plugins runs with, the same as pyproject.toml's bounds."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from se_plugins.versions import OLDEST, check_versions, installed_versions, release

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "numbers"),
    [("2.11.0+cu130", (2, 11, 0)), ("1.0.32.dev0", (1, 0, 32)), ("0.5", (0, 5)), ("2.12.0a0+git1", (2, 12, 0)),
     ("unknown", ())],
)
def test_release_numbers(text, numbers):
    assert release(text) == numbers


def test_the_installed_libraries_pass():
    check_versions()
    assert set(installed_versions()) == set(OLDEST)


def test_older_libraries_are_one_line_naming_each():
    found = {"torch": "2.14.1+cu130", "timm": "1.0.25", "segmentation-models-pytorch": "0.4.0", "torchvision": "x"}
    with pytest.raises(ImportError) as info:
        check_versions(found)
    message = str(info.value)
    assert "\n" not in message
    assert "timm>=1.0.31 (found 1.0.25)" in message and "segmentation-models-pytorch>=0.5 (found 0.4.0)" in message
    assert set(re.findall(r"([\w-]+)>=", message)) == {"timm", "segmentation-models-pytorch"}  # not: new enough; unread
    assert message.endswith("pip install --upgrade 'timm>=1.0.31' 'segmentation-models-pytorch>=0.5'")
    check_versions({"timm": "1.0.31", "torch": "2.11.0"})  # the oldest themselves pass


def test_import_fails_on_an_older_timm_before_any_adapter():
    code = "import timm; timm.__version__ = '1.0.25'; import se_plugins"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: se_plugins needs timm>=1.0.31 (found 1.0.25): pip install --upgrade 'timm>=1.0.31'"
    )


def test_oldest_are_pyproject_lower_bounds():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(REPO / "pyproject.toml", "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    bounds = dict(re.fullmatch(r"([\w-]+)>=([\d.]+)", d).groups() for d in dependencies if d.split(">=")[0] in OLDEST)
    assert bounds == {dist: ".".join(map(str, oldest)) for dist, (_, oldest) in OLDEST.items()}
