"""Data errors raised in DataLoader workers, carried to the main process as data so they stay one line.

PyTorch re-raises worker exceptions with the worker's traceback in the message; returning the error as an item
lets the task raise it in the main process with its original one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from torch.utils.data import Dataset, get_worker_info

from se_plugins.errors import SEPluginsError


class LoadFailure(NamedTuple):
    """A data error caught in a DataLoader worker, re-raised in the main process as one line."""

    error_type: type[BaseException]
    message: str


class ReportErrors(Dataset):
    """Pass items through; in a worker process turn ``SEPluginsError`` into a :class:`LoadFailure` item."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> Any:
        try:
            return self.dataset[idx]
        except SEPluginsError as e:
            if get_worker_info() is None:
                raise
            return LoadFailure(type(e), str(e))

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.class_names)  # type: ignore[attr-defined]


def first_failure(batch: Sequence[Any]) -> LoadFailure | None:
    """The first data error a worker reported in ``batch`` (for a task's ``collate``), or None."""
    return next((item for item in batch if isinstance(item, LoadFailure)), None)


def raise_failure(batch: Any) -> None:
    """Re-raise a collated :class:`LoadFailure` in the main process with its one-line message."""
    if isinstance(batch, LoadFailure):
        raise batch.error_type(batch.message)
