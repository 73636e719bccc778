"""Wording shared by the readers' warnings and ``check-data``: the first few ids of a list of problems."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SHOWN_IDS = 5
"""How many ids a message lists before ``...``."""


def some_ids(ids: Sequence[Any], limit: int = SHOWN_IDS) -> str:
    """``"3, 7, 9"``, or ``"3, 7, 9, 11, 12, ... (20 in all)"`` when there are more than ``limit``."""
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown if len(ids) <= limit else f"{shown}, ... ({len(ids)} in all)"


def is_background_name(name: Any) -> bool:
    """A category name that means background: ``background``, ``_background_``, ``__background__``, any case."""
    return isinstance(name, str) and name.strip().strip("_").strip().lower() == "background"
