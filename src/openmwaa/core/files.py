"""Durable state files: written whole or not at all, and never silently replaced.

A state file whose loss loses data (an environment's secrets, its ports) is
read with :func:`read_json`, which fails with a message naming the file when it
cannot be read, instead of letting the caller start over with new values.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class StateFileError(Exception):
    """A state file exists but cannot be used; ``str()`` names the file and what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"{path}: {problem}. The file holds state that cannot be recreated without losing "
            "data: restore it from a backup, or move it away to start that state afresh."
        )
        self.path = path


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` survive a power loss."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a mix.

    ``durable``: the file and its folder are fsynced before this returns (state files);
    off for bulk copies whose loss only costs a download again (the DAG mirror).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json(path: Path, data: Any, mode: int | None = None) -> None:
    """``data`` as JSON, durably and atomically."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode)


def read_json(path: Path, *, expect: type = dict) -> Any:
    """The JSON document in ``path``; None when the file does not exist.

    StateFileError when it exists but is unreadable, truncated, not JSON or not of
    type ``expect``: callers must not quietly start over (new keys would make stored
    data unreadable).
    """
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateFileError(path, f"is not valid JSON ({exc})") from exc
    if not isinstance(data, expect):
        raise StateFileError(path, f"holds a {type(data).__name__}, not a {expect.__name__}")
    return data
