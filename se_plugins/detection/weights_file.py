"""Local detector weights files: a state dict (or a checkpoint holding one) loaded strictly, one-line errors.

Used by every builder's ``weights_file`` / ``backbone_weights_file``. With ``keep_missing_se`` a file without
SE weights (a base detector, e.g. one trained by this package with SE off) loads into an SE detector: every key
of the file must fit, and the SE modules the file lacks keep their initial values -- with ``init="identity"``
the detector then returns the file's detections exactly (the same completion as the ``se_plugin_*`` timm twins'
pretrained loading).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from se_plugins.errors import CheckpointError
from se_plugins.models._factory import complete_se_state_dict


def load_state_dict_file(
    module: nn.Module, path: str | os.PathLike, what: str, expected: str, keep_missing_se: bool = False
) -> None:
    """Load a local state-dict file strictly into ``module``; any problem is one ``CheckpointError`` line.

    Args:
        module: Where the weights go.
        path: The file (a state dict, or a checkpoint holding one under ``"model"`` or ``"state_dict"``, e.g.
            this package's ``last.pth`` / ``best.pth``).
        what: The keyword the file came from (named in errors), e.g. ``"backbone_weights_file"``.
        expected: What the file should be (named in errors), e.g. ``"a torchvision resnet50 state dict"``.
        keep_missing_se: SE modules of ``module`` that the file has no weights for keep their current values
            (every other key is still loaded strictly).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path!r}: no such file")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"{what} {path!r}: cannot read it as a state dict ({e})") from e
    for key in ("model", "state_dict"):  # a checkpoint wrapping the state dict
        if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{what} {path!r}: expected a state dict, got {type(state_dict)}")
    if keep_missing_se:
        state_dict = complete_se_state_dict(dict(state_dict), module)
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        details = " ".join(line.strip() for line in str(e).splitlines()[1:])
        details = details if len(details) <= 300 else details[:300] + "..."
        raise CheckpointError(f"{what} {path!r} is not {expected}: {details}") from e
