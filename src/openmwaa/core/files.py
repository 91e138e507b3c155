"""Durable state files: written whole or not at all, and never silently replaced.

A state file whose loss loses data (an environment's secrets, its ports) is
read with :func:`read_json`, which fails with a message naming the file when it
cannot be read, instead of letting the caller start over with new values.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
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


def write_atomic(
    path: Path,
    data: bytes,
    mode: int | None = None,
    *,
    durable: bool = True,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a mix.

    ``durable``: the file and its folder are fsynced before this returns (state files);
    off for bulk copies whose loss only costs a download again (the DAG mirror).
    ``owner``: (uid, gid) the file is given before it appears (a file the server writes
    for an environment's user). The temporary file is created exclusively and never
    through a symlink, so a folder an environment's user can write into cannot turn the
    server's write into one somewhere else.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o666 if mode is None else mode)
        with open(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json(
    path: Path, data: Any, mode: int | None = None, owner: tuple[int, int] | None = None
) -> None:
    """``data`` as JSON, durably and atomically."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode, owner=owner)


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


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """``top`` and everything in it given to ``uid:gid``; links are changed, never followed."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def open_tree(top: Path) -> None:
    """Everything in ``top`` readable by everyone (folders passable, programs runnable),
    writable by its owner alone: software that every environment's user runs."""
    for dirpath, _dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)  # noqa: S103 - read-only for everyone by design
        for name in filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode):
                os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)  # noqa: S103
