"""Config schema, YAML loading, overrides, one-line errors, and the task registry."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
from omegaconf import OmegaConf
from toy_task import ToyTask

from se_plugins.engine import config as config_module
from se_plugins.engine.config import default_config, load_config, save_config
from se_plugins.engine.tasks import TASKS, get_task_class
from se_plugins.errors import ConfigError


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_yaml_values_defaults_and_overrides(tmp_path):
    text = "task: segmentation\ntrain:\n  lr: 0.01\n  epochs: 3\nmodel:\n  se: {reduction: 8}\n"
    path = write(tmp_path, text)
    cfg = load_config(
        path,
        [
            "train.lr=0.5",
            "train.milestones=[2,3]",
            "model.se.stages=[3,4]",
            "data.classes=[cat,dog]",
            "model.kwargs.decoder_channels=[64,32]",
            "train.clip_grad_norm=10",
            "device=cpu",
        ],
    )
    assert cfg.task == "segmentation"
    assert cfg.train.epochs == 3  # from the file
    assert cfg.model.se.reduction == 8
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)  # override beats the file
    assert list(cfg.train.milestones) == [2, 3]
    assert list(cfg.model.se.stages) == [3, 4]
    assert list(cfg.data.classes) == ["cat", "dog"]
    assert OmegaConf.to_container(cfg.model.kwargs) == {"decoder_channels": [64, 32]}
    assert cfg.train.clip_grad_norm == 10.0 and isinstance(cfg.train.clip_grad_norm, float)
    assert cfg.device == "cpu"
    assert cfg.train.batch_size == default_config().train.batch_size  # untouched keys keep the schema default
    assert load_config(path, ["model.se.stages=null"]).model.se.stages is None


def test_empty_file_is_all_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(default_config())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  lrr: 0.1\n", "train.lrr: unknown key (did you mean 'lr'?)"),
        ("trian:\n  lr: 0.1\n", "trian: unknown key (did you mean 'train'?)"),
        ("model:\n  se:\n    reduce: 4\n", "model.se.reduce: unknown key"),
        ("train:\n  lr: abc\n", "train.lr: Value 'abc' of type 'str' could not be converted to Float"),
        ("train:\n  epochs: 1.5\n", "train.epochs: Value '1.5' of type 'float' could not be converted"),
        ("train:\n  milestones: [1, x]\n", "train.milestones[1]: Value 'x' of type 'str' could not be"),
        ("train:\n  milestones: {a: 1}\n", "train.milestones: expected a list, got a mapping"),
        ("train: 5\n", "train: expected a mapping of keys, got int 5"),
        ("model:\n  kwargs: 3\n", "model.kwargs: expected a mapping of keys, got int 3"),
        ("train:\n  amp: maybe\n", "train.amp: Value 'maybe' is not a valid bool"),
        ("train:\n  optimizer: adam\n", "train.optimizer: 'adam' is not one of sgd, adamw"),
        ("eval:\n  metric: map\n", "eval.metric: 'map' is not one of coco, voc07, voc, miou"),
        ("train:\n  epochs: 0\n", "train.epochs: must be >= 1, got 0"),
        ("train:\n  lr: -0.1\n", "train.lr: must be > 0, got -0.1"),
        ("device: gpu\n", "device: 'gpu' is not one of auto, cpu, cuda, cuda:N"),
        ("task: 'my task'\n", "task: 'my task' is not a task name or 'package.module:Class'"),
        ("- a\n- b\n", "the top level must be a mapping of keys, got list"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: {expected}"), message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: [0.1\n  epochs: 2\n")
    message = config_error(path)
    assert re.match(rf"{re.escape(str(path))}: invalid YAML: line \d+, column \d+: ", message), message


def test_missing_file(tmp_path):
    assert config_error(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: config file not found"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr", "--set 'train.lr': expected key=value"),
        ("=3", "--set '=3': expected key=value"),
        ("train.lrr=0.1", "--set train.lrr=0.1: train.lrr: unknown key (did you mean 'lr'?)"),
        ("train.lr=abc", "--set train.lr=abc: train.lr: Value 'abc' of type 'str' could not be converted"),
        ("train.milestones=[1,", "--set train.milestones=[1,: cannot parse value"),
        (
            "train.scheduler=step",
            "--set train.scheduler=step: train.scheduler: 'step' is not one of multistep",
        ),
        ("train=1", "--set train=1: train: expected a mapping of keys, got int 1"),
    ],
)
def test_bad_overrides_name_the_override(tmp_path, override, expected):
    message = config_error(write(tmp_path, "seed: 1\n"), [override])
    assert message.startswith(expected), message


def test_save_config_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 0.3\n"), ["model.kwargs.a=[1,2]", "data.classes=[x]"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert OmegaConf.to_container(load_config(out)) == OmegaConf.to_container(cfg)
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_every_schema_key_is_documented():
    """Each field of each config dataclass carries an explanatory comment on its line."""
    members = inspect.getmembers(config_module, dataclasses.is_dataclass)
    classes = [obj for _, obj in members if isinstance(obj, type)]
    assert {c.__name__ for c in classes} >= {"Config", "ModelConfig", "DataConfig", "TrainConfig", "SEConfig"}
    for cls in classes:
        source = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            line = next(ln for ln in source.splitlines() if ln.strip().startswith(f"{f.name}:"))
            assert "  # " in line, f"{cls.__name__}.{f.name} has no comment"


def test_task_registry_resolves_lazily():
    assert set(TASKS) == {"detection", "segmentation", "classification"}
    assert all(":" in path for path in TASKS.values())
    assert get_task_class("toy_task:ToyTask") is ToyTask
    with pytest.raises(ConfigError, match=r"task: 'nope' is not one of detection, segmentation"):
        get_task_class("nope")
    with pytest.raises(ConfigError, match=r"task: 'no_such_module_xyz:T': cannot import no_such_module_xyz"):
        get_task_class("no_such_module_xyz:T")
    with pytest.raises(ConfigError, match=r"toy_task has no Task subclass named QuadrantDataset"):
        get_task_class("toy_task:QuadrantDataset")
