"""Intensity normalisation: raw pixel values (8/16-bit integers, floats) to float32 in [0, 1] by an explicit rule.

The rule is ``data.intensity`` in a config:

- ``auto``: by the data type. Unsigned integers are divided by their maximum (8-bit: /255, 16-bit: /65535),
  signed integers are mapped from their type's range (int16: ``(x + 32768) / 65535``), booleans are 0/1 and
  floats are taken as they are. 32/64-bit integers have no sensible fixed scale and are rejected (except
  PIL's 32-bit mode ``I`` holding 16-bit data, e.g. a 16-bit PNG or PGM, which is read as 16-bit).
- ``percentile``: per image and channel, ``(x - p_lo) / (p_hi - p_lo)`` with the ``data.intensity_percentiles``
  percentiles (default 1 and 99.8: the usual microscopy rescale); values beyond them saturate at 0 and 1 by
  design (this is said once in the log line, not warned per image). A constant channel becomes 0.
- ``range``: ``(x - lo) / (hi - lo)`` with the fixed ``data.intensity_range: [lo, hi]`` (e.g. ``[0, 4095]`` for a
  12-bit camera stored in 16-bit files).

Values outside [0, 1] after ``auto`` (floats) or ``range`` are clipped with a warning that names the file, counts
its clipped values and the files with clipped values so far (the first 5 such files of a process are each reported,
then every 100th, so a large data set does not flood the log); NaN/inf values become 0, also with a counted
warning. Nothing is clipped silently.

Example:
    >>> rule = IntensityRule("range", value_range=(0.0, 4095.0))
    >>> normalize_intensity(raw_uint16_chw, rule, "cells/001.tif")   # float32 [C, H, W] in [0, 1]
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from se_plugins.errors import DataError

INTENSITY_MODES = ("auto", "percentile", "range")
"""The values of ``data.intensity``."""

DEFAULT_PERCENTILES = (1.0, 99.8)
"""Default ``data.intensity_percentiles`` (low, high)."""

WARN_FIRST_FILES, WARN_EVERY_FILES = 5, 100
"""Clip warnings: each of the first 5 files with clipped values, then every 100th (the message counts them all)."""

_CLIPPED_FILES: set[str] = set()  # files of this process with clipped values (each counted once, across epochs)


@dataclass(frozen=True)
class IntensityRule:
    """How raw values become [0, 1] (see the module docstring).

    Attributes:
        mode: ``"auto"`` | ``"percentile"`` | ``"range"``.
        value_range: ``(lo, hi)`` for ``"range"``.
        percentiles: ``(low, high)`` percentiles in [0, 100] for ``"percentile"``.
    """

    mode: str = "auto"
    value_range: tuple[float, float] | None = None
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES

    def __post_init__(self) -> None:
        if self.mode not in INTENSITY_MODES:
            raise ValueError(f"intensity mode {self.mode!r} is not one of {', '.join(INTENSITY_MODES)}")
        if self.mode == "range":
            if self.value_range is None or len(self.value_range) != 2:
                raise ValueError("intensity mode 'range' needs value_range=(lo, hi)")
            lo, hi = self.value_range
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ValueError(f"intensity range must be two finite numbers lo < hi, got {list(self.value_range)}")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"intensity percentiles must satisfy 0 <= low < high <= 100, got {list(self.percentiles)}")

    def describe(self) -> str:
        """One line for the log: the rule as applied."""
        if self.mode == "auto":
            return (
                "intensity auto: 8-bit /255, 16-bit /65535 (signed: from the type's range), float as is; "
                "values outside [0, 1] are clipped with a warning"
            )
        if self.mode == "range":
            lo, hi = self.value_range  # type: ignore[misc]
            return f"intensity range [{lo:g}, {hi:g}] -> [0, 1]; values outside are clipped with a warning"
        low, high = self.percentiles
        return (
            f"intensity percentile: per image and channel, the {low:g}th..{high:g}th percentiles -> [0, 1] "
            "(values beyond them saturate by design)"
        )


def normalize_intensity(
    raw: np.ndarray,
    rule: IntensityRule,
    path: str | os.PathLike,
    *,
    bits: int | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Map a raw ``[C, H, W]`` array to float32 in [0, 1] by ``rule``.

    Args:
        raw: Pixel values as decoded (any integer, bool or float dtype).
        rule: The normalisation rule.
        path: The file the values come from (named in warnings and errors).
        bits: Significant bits when the container type is wider than the data (PIL mode ``I`` from a 16-bit
            file: 16); ``None`` = the dtype's own width.
        valid: ``[H, W]`` pixels the ``percentile`` statistics come from (e.g. alpha > 0: what lies under fully
            transparent pixels is arbitrary); None or all False = every pixel.

    Returns:
        float32 array of the same shape, every value in [0, 1].

    Raises:
        DataError: ``auto`` on a 32/64-bit integer image (no fixed scale), or values that do not fit ``bits``.
    """
    if rule.mode == "auto":
        out = _auto(raw, path, bits)
        if raw.dtype.kind in "uib":
            return out  # integers scaled by their type's range: always inside [0, 1], nothing to check
    elif rule.mode == "range":
        lo, hi = rule.value_range  # type: ignore[misc]
        out = ((_finite_float64(raw, path) - lo) / (hi - lo)).astype(np.float32)
    else:
        out = _percentile(_finite_float64(raw, path), rule.percentiles, valid)
    return _clip_counted(out, path, rule)


def reset_clip_count() -> None:
    """Forget the files counted by the clip warnings (the count is per process; e.g. to start a new data set)."""
    _CLIPPED_FILES.clear()


def scale_alpha(alpha: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """An alpha channel as float32 in [0, 1]: integers by their type's maximum, floats as they are (clipped)."""
    if alpha.dtype.kind in "ui":
        return alpha.astype(np.float32) / np.float32(np.iinfo(alpha.dtype).max)
    if alpha.dtype.kind == "b":
        return alpha.astype(np.float32)
    a = np.nan_to_num(alpha.astype(np.float32), nan=1.0, posinf=1.0, neginf=0.0)
    return np.clip(a, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ helpers


def _auto(raw: np.ndarray, path: str | os.PathLike, bits: int | None) -> np.ndarray:
    kind, itemsize = raw.dtype.kind, raw.dtype.itemsize
    if kind == "b":
        return raw.astype(np.float32)
    if kind == "f":
        return _finite_float64(raw, path).astype(np.float32) if raw.dtype.itemsize > 4 else _finite32(raw, path)
    if kind not in "ui":
        raise DataError(f"{path}: pixel type {raw.dtype} is not supported")
    if bits is None and itemsize > 2:
        raise DataError(
            f"{path}: {8 * itemsize}-bit integer pixels have no fixed scale for data.intensity auto; "
            "set data.intensity to range (with data.intensity_range: [lo, hi]) or percentile"
        )
    if bits is not None:
        top = 2**bits - 1
        if raw.size and (int(raw.min()) < 0 or int(raw.max()) > top):
            raise DataError(
                f"{path}: values {int(raw.min())}..{int(raw.max())} do not fit the {bits}-bit data this file "
                "should hold; set data.intensity to range or percentile"
            )
        return raw.astype(np.float32) / np.float32(top)
    info = np.iinfo(raw.dtype)
    if kind == "u":  # float32 division: exact integers, correctly rounded (8-bit: the values this package always had)
        return raw.astype(np.float32) / np.float32(info.max)
    return (raw.astype(np.float32) - np.float32(info.min)) / np.float32(info.max - info.min)


def _finite32(raw: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    out = raw.astype(np.float32, copy=True)
    bad = ~np.isfinite(out)
    if bad.any():
        _warn_non_finite(int(bad.sum()), out.size, path)
        out[bad] = 0.0
    return out


def _finite_float64(raw: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    out = raw.astype(np.float64, copy=True)
    if raw.dtype.kind == "f":
        bad = ~np.isfinite(out)
        if bad.any():
            _warn_non_finite(int(bad.sum()), out.size, path)
            out[bad] = np.nan  # left out of percentiles, set to 0 after scaling
    return out


def _percentile(values: np.ndarray, percentiles: tuple[float, float], valid: np.ndarray | None) -> np.ndarray:
    out = np.zeros(values.shape, dtype=np.float32)
    use = valid if valid is not None and valid.any() else None
    for c in range(values.shape[0]):
        channel = values[c]
        sample = channel if use is None else channel[use]
        if np.isnan(sample).all():
            continue
        lo, hi = np.nanpercentile(sample, list(percentiles))
        if hi > lo:
            out[c] = np.clip((channel - lo) / (hi - lo), 0.0, 1.0)  # saturation is the rule, not an error
    return np.nan_to_num(out, nan=0.0)


def _clip_counted(out: np.ndarray, path: str | os.PathLike, rule: IntensityRule) -> np.ndarray:
    out = np.nan_to_num(out, nan=0.0, copy=False)
    below, above = int((out < 0).sum()), int((out > 1).sum())
    if below or above:
        np.clip(out, 0.0, 1.0, out=out)
        key = os.fspath(path)
        if key in _CLIPPED_FILES:
            return out  # counted (and reported, if it was its turn) when first seen, e.g. in an earlier epoch
        _CLIPPED_FILES.add(key)
        seen = len(_CLIPPED_FILES)
        if seen > WARN_FIRST_FILES and seen % WARN_EVERY_FILES:
            return out  # counted; the next report (every 100th file) includes it
        hint = "; widen data.intensity_range" if rule.mode == "range" else "; set data.intensity range or percentile"
        warnings.warn(
            f"{path}: {below + above} of {out.size} values ({100.0 * (below + above) / out.size:.3g} %) fall "
            f"outside [0, 1] after intensity {rule.mode} normalisation ({below} below, {above} above): clipped{hint} "
            f"({seen} {'file' if seen == 1 else 'files'} with clipped values so far in this process)",
            stacklevel=3,
        )
    return out


def _warn_non_finite(count: int, total: int, path: str | os.PathLike) -> None:
    warnings.warn(f"{path}: {count} of {total} values are NaN or infinite; set to 0", stacklevel=4)
