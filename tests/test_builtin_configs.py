"""Built-in configs by name (`se-plugins train NAME`, `se-plugins configs`) and the version from the metadata."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import se_plugins
from se_plugins.cli import main
from se_plugins.engine import builtin_configs as bc
from se_plugins.engine.builtin_configs import builtin_configs, configs_dir, describe, resolve_config
from se_plugins.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_every_repository_config_is_built_in_once():
    root = REPO / "configs"
    repo = sorted((p.parent.relative_to(root).as_posix(), p.stem) for p in root.rglob("*.yaml"))
    found = [(c.task, c.name) for c in builtin_configs()]
    assert found == repo and len(found) >= 12
    names = [c.name for c in builtin_configs()]
    assert len(set(names)) == len(names), "two task folders hold a config of the same name: names must be unique"
    assert configs_dir().samefile(REPO / "configs")  # se_plugins/configs is the repository's configs/
    for c in builtin_configs():
        assert c.path.samefile(REPO / "configs" / c.task / f"{c.name}.yaml")
        assert 10 < len(c.description) <= bc.DESCRIPTION_WIDTH and "\n" not in c.description, c


@pytest.mark.parametrize(
    "given",
    [
        "shapes_fasterrcnn_se_r18",
        "shapes_fasterrcnn_se_r18.yaml",
        "detection/shapes_fasterrcnn_se_r18",
        "detection/shapes_fasterrcnn_se_r18.yaml",
    ],
)
def test_resolve_a_name(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository
    assert resolve_config(given).samefile(REPO / "configs/detection/shapes_fasterrcnn_se_r18.yaml")


def test_an_existing_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "shapes_fasterrcnn_se_r18.yaml"
    own.write_text("task: detection\n")
    assert resolve_config("shapes_fasterrcnn_se_r18.yaml") == Path("shapes_fasterrcnn_se_r18.yaml")
    assert resolve_config(own) == own
    repo_path = REPO / "configs/segmentation/voc_unet_r50.yaml"
    assert resolve_config(repo_path) == repo_path


def test_unknown_name_lists_the_built_in_ones():
    with pytest.raises(ConfigError) as info:
        resolve_config("shapes_unet_se_r81")
    message = str(info.value)
    assert message.startswith("unknown config 'shapes_unet_se_r81': not a file and not a built-in config; ")
    assert "did you mean 'shapes_unet_se_r18'?" in message
    assert message.endswith("built-in configs: " + ", ".join(c.name for c in builtin_configs()))


def test_missing_path_names_a_built_in_config_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^configs/x/nope\.yaml: config file not found$"):
        resolve_config("configs/x/nope.yaml")
    with pytest.raises(ConfigError) as info:
        resolve_config("configs/detection/shapes_fasterrcnn_se_r18.yml")
    assert str(info.value) == (
        "configs/detection/shapes_fasterrcnn_se_r18.yml: config file not found "
        "(a built-in config has that name: se-plugins train shapes_fasterrcnn_se_r18)"
    )


def test_a_name_in_two_task_folders_is_ambiguous(tmp_path, monkeypatch):
    for task in ("classification", "detection", "detection/extra"):
        (tmp_path / "configs" / task).mkdir(parents=True)
        (tmp_path / "configs" / task / "demo.yaml").write_text(f"# The {task} demo.\ntask: {task}\n")
    monkeypatch.setattr(bc, "configs_dir", lambda: tmp_path / "configs")
    with pytest.raises(ConfigError) as info:
        resolve_config("demo")
    everywhere = "classification/demo, detection/demo, detection/extra/demo"
    assert str(info.value) == f"config name 'demo' is ambiguous: {everywhere}"
    assert resolve_config("detection/demo") == tmp_path / "configs/detection/demo.yaml"
    assert resolve_config("detection/extra/demo.yaml") == tmp_path / "configs/detection/extra/demo.yaml"
    assert [(c.task, c.description) for c in builtin_configs()] == [
        ("classification", "The classification demo."),
        ("detection", "The detection demo."),
        ("detection/extra", "The detection/extra demo."),
    ]


def test_describe_takes_the_first_sentence_of_the_header(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("# Faster R-CNN on COCO: the 1x recipe. More text\n# on the next line.\n#\n# Other paragraph.\nx: 1\n")
    assert describe(f) == "Faster R-CNN on COCO: the 1x recipe."
    f.write_text("# A demo on two lines,\n# joined into one\n#   se-plugins train c.yaml\n")
    assert describe(f) == "A demo on two lines, joined into one"
    f.write_text("# " + "word " * 40 + "\n")
    assert describe(f) == ("word " * 15).strip() + "..."  # 15 words: 74 chars + '...' <= 80
    f.write_text("task: detection  # no header\n")
    assert describe(f) == ""


def test_cli_lists_and_prints_built_in_configs(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "task", "description"]
    rows = [line.split(maxsplit=2) for line in lines[1:-1]]
    assert [(r[0], r[1]) for r in rows] == [(c.name, c.task) for c in builtin_configs()]
    assert [r[2] for r in rows] == [c.description for c in builtin_configs()]
    assert lines[-1].startswith(f"({len(rows)} configs in {configs_dir()}")
    assert main(["configs", "voc_unet_se_r50"]) == 0
    assert capsys.readouterr().out == (REPO / "configs/segmentation/voc_unet_se_r50.yaml").read_text(encoding="utf-8")
    assert main(["configs", "voc_unet"]) == 2
    assert error_line(capsys).startswith("se-plugins: error: unknown config 'voc_unet': ")


def test_cli_train_and_eval_resolve_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # validation fails before anything is built or written
    path = configs_dir() / "detection" / "shapes_fasterrcnn_se_r18.yaml"
    assert main(["train", "shapes_fasterrcnn_se_r18", "--set", "train.lrr=1"]) == 2
    assert error_line(capsys) == "se-plugins: error: --set train.lrr=1: train.lrr: unknown key (did you mean 'lr'?)"
    assert main(["eval", "shapes_fasterrcnn_se_r18", "--checkpoint", "x.pth", "--set", "eval.metric=voc12"]) == 2
    assert "eval.metric" in error_line(capsys)
    assert main(["train", "shapes_fasterrcnn_se_r18x"]) == 2
    assert "did you mean 'shapes_fasterrcnn_se_r18'?" in error_line(capsys)
    assert path.is_file() and list(tmp_path.iterdir()) == []


def test_version_comes_from_the_package_metadata(capsys):
    assert se_plugins.__version__ == importlib.metadata.version("se-plugins")
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"se-plugins {se_plugins.__version__}\n"
