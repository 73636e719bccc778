"""Run outputs for humans and tools: ``metrics.jsonl``, TensorBoard events and ``curves.png``.

``metrics.jsonl`` holds one JSON object per line; every object has ``"type"``, ``"epoch"`` (1-based) and
``"step"`` (optimizer steps completed):

- ``{"type": "train", "epoch", "iter", "step", "lr", "loss", <other losses>, "time"}`` every ``log_every``
  iterations (losses averaged over the iterations since the previous record, and over ranks);
- ``{"type": "epoch", "epoch", "step", "lr", "loss", <other losses>, "time"}`` once per epoch (epoch means);
- ``{"type": "eval", "epoch", "step", <metrics>}`` after each evaluation;
- ``{"type": "nonfinite", "epoch", "iter", "step", <losses>}`` when training stops on a NaN/inf loss.

``metrics.jsonl`` and the metrics files of ``se-plugins eval --out`` / ``eval-results --out`` are strict JSON
(RFC 8259, ``json.dumps(..., allow_nan=False)``): a NaN or infinite value is written as ``null`` (``strict_json``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger("se_plugins.engine")


class MetricsLogger:
    """Append records to ``metrics.jsonl`` and mirror numeric values to TensorBoard (rank 0 only).

    Args:
        output_dir: Run directory.
        enabled: False on non-zero ranks: every method is then a no-op.
        tensorboard: Also write TensorBoard events to ``output_dir/tensorboard`` (if it is installed).
        resume_step: ``None`` starts a fresh ``metrics.jsonl``; an int keeps the existing records with
            ``step <= resume_step`` (those before the checkpoint a run resumes from) and appends after them.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = (
            [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step is not None else []
        )
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(strict_json(r, indent=None) + "\n" for r in kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL and PNG only
                logger.info("tensorboard is not installed: no TensorBoard events written")
            else:
                self._tb = SummaryWriter(
                    log_dir=str(Path(output_dir) / "tensorboard"),
                    purge_step=None if resume_step is None else resume_step + 1,
                )

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one record (values made plain floats/ints/strings); numbers also go to TensorBoard."""
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")
        if self._tb is not None:
            kind, step = clean.get("type", "log"), int(clean.get("step", 0))
            for key, value in clean.items():
                if key not in ("type", "epoch", "iter", "step") and isinstance(value, int | float):
                    self._tb.add_scalar(f"{kind}/{key}", value, global_step=step)
            self._tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file (``[]`` when missing; a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike, main_metric: str | None = None) -> Path:
    """Plot training loss and the main metric per epoch from ``metrics.jsonl`` into a PNG (atomic write).

    Left panel: epoch-mean training loss (and the per-``log_every`` records faintly, on a fractional epoch
    axis). Right panel: ``main_metric`` of each evaluation.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from se_plugins.atomic import atomic_write_bytes

    records = read_metrics(metrics_path)
    epochs = [r for r in records if r.get("type") == "epoch" and "loss" in r]
    iters = [r for r in records if r.get("type") == "train" and "loss" in r]
    evals = [r for r in records if r.get("type") == "eval" and main_metric and main_metric in r]

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_metric = fig.subplots(1, 2)
    if iters:
        steps_per_epoch = max(r["iter"] for r in iters) or 1
        x = [r["epoch"] - 1 + r["iter"] / steps_per_epoch for r in iters]
        ax_loss.plot(x, [r["loss"] for r in iters], color="tab:blue", alpha=0.3, lw=1, label="train loss (log)")
    if epochs:
        ax_loss.plot(
            [r["epoch"] for r in epochs],
            [r["loss"] for r in epochs],
            "o-",
            color="tab:blue",
            label="train loss",
        )
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_loss.grid(alpha=0.3)
    if iters or epochs:
        ax_loss.legend(loc="upper right")
    if evals:
        ax_metric.plot([r["epoch"] for r in evals], [r[main_metric] for r in evals], "o-", color="tab:orange")
    ax_metric.set(xlabel="epoch", ylabel=main_metric or "metric", title=f"validation {main_metric or ''}".strip())
    ax_metric.grid(alpha=0.3)
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out_path = Path(out_path)
    atomic_write_bytes(out_path, buf.getvalue())
    return out_path


def format_metrics(metrics: Mapping[str, Any], title: str | None = None) -> str:
    """A two-column text table of metrics (floats with 4 decimals)."""
    if not metrics:
        return f"{title}\n(no metrics)" if title else "(no metrics)"
    width = max(len(str(k)) for k in metrics)
    lines = [title] if title else []
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def strict_json(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as strict JSON text: NaN/inf become ``null``, tensors and NumPy numbers plain numbers."""
    return json.dumps(_plain_tree(obj), indent=indent, allow_nan=False)


def _plain_tree(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain_tree(v) for v in obj]
    return _plain(obj)


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: tensors/NumPy numbers to Python numbers, NaN/inf to None (JSON ``null``)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
