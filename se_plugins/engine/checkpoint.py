"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and RNG state capture/restore.

A training checkpoint (``last.pth``) is a dict of tensors and plain Python containers only::

    format_version  int       CHECKPOINT_VERSION
    model           dict      state dict of the model (unwrapped from DDP)
    optimizer       dict      optimizer.state_dict()
    scheduler       dict      LR scheduler state_dict()
    scaler          dict      GradScaler state_dict() (empty when AMP is off)
    epoch           int       epochs completed
    step            int       optimizer steps completed
    best_metric     float|None  best value of the task's main metric so far
    best_epoch      int|None    epoch that reached it
    main_metric     str       name of the main metric
    metrics         dict      the last evaluation's metrics {name: float}
    config          str       the run's resolved config as YAML
    world_size      int       processes that wrote it
    rng             list      per rank: RNG states (see ``capture_rng_state``)

``best.pth`` holds the same keys except optimizer/scheduler/scaler/rng (it is for evaluation and deployment).
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from se_plugins.atomic import atomic_write, atomic_write_bytes  # noqa: F401  (re-exported)
from se_plugins.errors import CheckpointError

CHECKPOINT_VERSION = 1


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save ``state`` with ``torch.save`` atomically.

    The file is written to a temporary file in the same folder, flushed and fsync'ed, then renamed over
    ``path``: a crash or error at any point leaves the previous ``path`` untouched and no temp file behind.

    Args:
        state: Tensors and plain containers only (so it loads with ``weights_only=True``).
        path: Destination file.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    atomic_write(path, lambda f: torch.save(dict(state), f))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, or holds objects other than tensors and plain
            containers (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: not loadable with weights_only=True: {_first_line(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(state).__name__}")
    return state


def model_state_from(state: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The model state dict of a loaded checkpoint: ``state["model"]``, or ``state`` if it is a bare one."""
    model_state = state.get("model", state)
    if not isinstance(model_state, Mapping) or not all(isinstance(v, torch.Tensor) for v in model_state.values()):
        raise CheckpointError("checkpoint holds no model state dict (expected a 'model' entry of tensors)")
    return model_state


def load_model_weights(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Load model weights (strictly) from a checkpoint file, a loaded checkpoint or a bare state dict.

    DDP prefixes (``module.``) are stripped.

    Returns:
        The loaded checkpoint dict (``{}`` extras for a bare state dict).

    Raises:
        CheckpointError: missing/corrupt file, or keys/shapes that do not fit ``model`` (names the first).
    """
    source = str(checkpoint) if isinstance(checkpoint, str | os.PathLike) else "checkpoint"
    state = load_checkpoint(checkpoint) if isinstance(checkpoint, str | os.PathLike) else dict(checkpoint)
    try:
        weights = model_state_from(state)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    weights = {k.removeprefix("module."): v for k, v in weights.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    bad_shape = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if bad_shape:
        k = bad_shape[0]
        shapes = f"{tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        problems.append(f"{len(bad_shape)} shape mismatches (e.g. {k}: {shapes} in checkpoint vs model)")
    if problems:
        raise CheckpointError(f"{source}: does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(weights, strict=True)
    return state


# ------------------------------------------------------------------------------------------- config changes

RESUME_FREE_KEYS: tuple[str, ...] = (
    "output_dir",
    "device",
    "train.epochs",
    "train.eval_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.num_vis",
    "train.tensorboard",
    "data.num_workers",
    "data.persistent_workers",
    "eval.batch_size",
    "eval.score_threshold",
)
"""Config keys (and sections) a resumed run may change freely: where and how often things are written, more
epochs, loader workers. Any other change needs ``--resume-override``."""


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``[(dotted key, old value, new value), ...]`` of two nested config dicts (lists compare whole).

    A key only one side has appears with ``None`` on the other side.
    """
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def needs_override(key: str) -> bool:
    """Whether changing ``key`` on resume changes what the run computes (see ``RESUME_FREE_KEYS``)."""
    return not any(key == free or key.startswith(f"{free}.") for free in RESUME_FREE_KEYS)


# ----------------------------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states as tensors and plain values (``weights_only`` safe)."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by ``capture_rng_state`` (CUDA only when present on both sides)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ------------------------------------------------------------------------------------------------ helpers


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
