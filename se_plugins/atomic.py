"""Atomic file writes: a crash or an error never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

TEMP_FILE_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
"""Names of ``atomic_write``'s temporary files: ``.<name>.<pid>.<8 hex digits>.tmp`` beside ``<name>``."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object], *, durable: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path``.

    Args:
        path: Destination; parent folders are created.
        write: Writes the content into the binary file object it is given.
        durable: fsync the file and its folder (checkpoints); False for bulk data whose completeness is marked
            by a file written last.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with "xb" (not mkstemp) so the file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # TEMP_FILE_PATTERN
    try:
        with open(tmp, "xb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data), durable=durable)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that ``atomic_write`` left in ``folder`` when its process was killed.

    Only files named like ``TEMP_FILE_PATTERN`` whose writing process no longer exists are removed (a file
    of a live process, this one included, may still be being written). Sub-folders are not searched.

    Returns:
        The files removed (sorted).
    """
    folder = Path(folder)
    if os.name != "posix" or not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = TEMP_FILE_PATTERN.match(path.name)
        if match and path.is_file() and not _process_exists(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True
