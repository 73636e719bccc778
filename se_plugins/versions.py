"""The oldest versions of the integrated libraries that se_plugins runs with, checked when it is imported
(``se_plugins/__init__.py`` imports this module first).

pip enforces pyproject.toml's ranges when it installs the package; this check covers where it does not (a source
tree on ``PYTHONPATH``, ``pip install --no-deps``, a machine's preinstalled libraries), where an older timm would
otherwise fail deep inside an adapter (e.g. an ``AttributeError`` on a block method it does not have yet).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping

# distribution name -> (module, oldest release); the same as pyproject.toml's lower bounds (tested)
OLDEST: dict[str, tuple[str, tuple[int, ...]]] = {
    "torch": ("torch", (2, 11)),
    "torchvision": ("torchvision", (0, 26)),
    "timm": ("timm", (1, 0, 31)),
    "segmentation-models-pytorch": ("segmentation_models_pytorch", (0, 5)),
}


def release(text: str) -> tuple[int, ...]:
    """The release numbers at the start of a version string: ``"2.11.0+cu130"`` -> ``(2, 11, 0)``,
    ``"1.0.32.dev0"`` -> ``(1, 0, 32)``; ``()`` when it starts with none."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def installed_versions() -> dict[str, str]:
    """``{distribution: __version__}`` of the libraries in :data:`OLDEST`, as imported."""
    return {dist: importlib.import_module(module).__version__ for dist, (module, _) in OLDEST.items()}


def check_versions(found: Mapping[str, str] | None = None) -> None:
    """Raise a one-line ``ImportError`` naming every library in ``found`` (default: :func:`installed_versions`) older
    than :data:`OLDEST`."""
    found = installed_versions() if found is None else found
    specs, notes = [], []
    for dist, text in found.items():
        oldest, numbers = OLDEST[dist][1], release(text)
        if numbers and numbers < oldest:  # a version with no release numbers is not judged
            specs.append(f"{dist}>={'.'.join(map(str, oldest))}")
            notes.append(f"{specs[-1]} (found {text})")
    if specs:
        raise ImportError(f"se_plugins needs {', '.join(notes)}: pip install --upgrade {' '.join(map(repr, specs))}")


check_versions()
