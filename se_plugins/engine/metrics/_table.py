"""Plain-text tables for the metric summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt_value(value: float, digits: int = 4) -> str:
    """Format a metric in [0, 1]; NaN and COCOeval's -1 (nothing to evaluate) print as ``n/a``."""
    if value is None or math.isnan(value) or value == -1:
        return "n/a"
    return f"{value:.{digits}f}"


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """Align ``rows`` under ``header``.

    Args:
        header: Column titles.
        rows: Cells (strings), one list per row.
        align: One letter per column, ``l`` or ``r``; default: first column left, the others right.
    """
    align = align or "l" + "r" * (len(header) - 1)
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=True)]
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(table[0]), sep, *(line(r) for r in table[1:])])
