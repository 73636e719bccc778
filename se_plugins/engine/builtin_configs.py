"""Built-in configs: the YAML files shipped inside the package, found by name.

The configs live in the package directory ``se_plugins/configs/<task>/<name>.yaml`` (package data, so an
installed wheel has them; in a repository checkout that directory is a symlink to the top-level ``configs/``).
A config is named by its file stem (``shapes_fasterrcnn_se_r18``), optionally with its task folder
(``detection/shapes_fasterrcnn_se_r18``) and/or the ``.yaml`` suffix. Its one-line description is the first
sentence of the comment block at the top of the file.

Example:
    >>> path = resolve_config("shapes_fasterrcnn_se_r18")     # a built-in name ...
    >>> path = resolve_config("my_runs/cfg.yaml")             # ... or any existing YAML file, returned as is
    >>> [c.name for c in builtin_configs()][:2]
    ['coco_fasterrcnn_r50_fpn', 'coco_fasterrcnn_se_r50_fpn']
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from se_plugins.errors import ConfigError

DESCRIPTION_WIDTH = 80
"""Longest description :func:`builtin_configs` returns (longer first sentences are cut at a word, with '...')."""


@dataclass(frozen=True)
class BuiltinConfig:
    """One built-in config file."""

    name: str  # file stem, e.g. shapes_fasterrcnn_se_r18
    task: str  # the folder it is in, relative to the configs folder, e.g. detection
    path: Path  # the YAML file
    description: str  # first sentence of its header comment ('' if it has none)


def configs_dir() -> Path:
    """The folder holding the built-in configs (``se_plugins/configs``)."""
    return Path(str(files("se_plugins").joinpath("configs")))


def builtin_configs() -> list[BuiltinConfig]:
    """Every built-in config, sorted by task folder then name."""
    root = configs_dir()
    if not root.is_dir():
        return []
    found = [(p.parent.relative_to(root).as_posix(), p) for p in root.rglob("*.yaml")]
    return [BuiltinConfig(p.stem, task, p, describe(p)) for task, p in sorted(found, key=lambda f: (f[0], f[1].stem))]


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """The YAML file meant by a path or a built-in config name.

    An existing file is returned as given (a path always wins over a name). Otherwise ``name_or_path`` is looked
    up among the built-in configs as ``name``, ``task/name``, ``name.yaml`` or ``task/name.yaml``.

    Raises:
        ConfigError: one line: a path that does not exist (naming a built-in config of the same name if there is
            one), a name that is not built in (listing the built-in names), or a name found in two task folders.
    """
    given = os.fspath(name_or_path)
    path = Path(given)
    if path.is_file():
        return path
    configs = builtin_configs()
    key = given.removesuffix(".yaml").removesuffix(".yml")
    matches = [c for c in configs if key in (c.name, f"{c.task}/{c.name}")]
    if len(matches) == 1:
        return matches[0].path
    if len(matches) > 1:
        both = ", ".join(f"{c.task}/{c.name}" for c in matches)
        raise ConfigError(f"config name '{given}' is ambiguous: {both}")
    if given.endswith((".yaml", ".yml")) or "/" in given or os.sep in given:
        same = any(c.name == path.stem for c in configs)
        hint = f" (a built-in config has that name: se-plugins train {path.stem})" if same else ""
        raise ConfigError(f"{given}: config file not found{hint}")
    names = [c.name for c in configs]
    close = difflib.get_close_matches(given, names, n=1)
    suggestion = f"did you mean '{close[0]}'? " if close else ""
    known = ", ".join(names) if names else "none (the package has no configs folder)"
    raise ConfigError(
        f"unknown config '{given}': not a file and not a built-in config; {suggestion}built-in configs: {known}"
    )


def describe(path: str | os.PathLike) -> str:
    """First sentence of the comment block that opens a YAML file, on one line (at most DESCRIPTION_WIDTH chars).

    The block ends at the first line that is not a comment, an empty comment (``#``) or an indented comment
    (``#   se-plugins train ...``, an example command).
    """
    words: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.rstrip("\n")
            if not text.startswith("#") or not text[1:].strip() or text.startswith("#  "):
                break
            words.extend(text[1:].split())
    paragraph = " ".join(words)
    end = re.search(r"[.!?](\s|$)", paragraph)
    sentence = paragraph[: end.start() + 1] if end else paragraph
    if len(sentence) > DESCRIPTION_WIDTH:
        sentence = sentence[: DESCRIPTION_WIDTH - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return sentence
