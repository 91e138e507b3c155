"""Component log files: bounded in size, and read back for the line a user needs.

A component writes its log through a file descriptor opened in append mode, which
the supervisor cannot reopen for it; so logs rotate copy-truncate style: the file is
copied to ``.1`` (older copies shifted to ``.2``...) and truncated in place. The
child's next write lands at the new end (append mode), so the file never becomes
sparse; lines written between the copy and the truncation are lost, which bounds
the loss to a few lines per rotation.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

LOG_MAX_BYTES = 50 * 1024 * 1024
"""A component's log is rotated once it grows past this size."""
LOG_KEEP = 2
"""Rotated copies kept (``name.log.1``, ``name.log.2``)."""
START_MARK = "--- openmwaa: starting"
"""The line the supervisor writes before each (re)start of a component."""
_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b|^(ERROR|CRITICAL|FATAL)\b")


def rotate(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """Rotate ``path`` copy-truncate style if it is larger than ``max_bytes``."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except OSError:
        return False
    for index in range(keep, 1, -1):
        older = path.with_name(f"{path.name}.{index - 1}")
        with contextlib.suppress(OSError):
            os.replace(older, path.with_name(f"{path.name}.{index}"))
    if keep > 0:
        copy = path.with_name(f"{path.name}.1")
        with contextlib.suppress(OSError):
            shutil.copyfile(path, copy)
            os.chmod(copy, 0o600)
    with contextlib.suppress(OSError), open(path, "r+b") as fh:
        fh.truncate(0)
    return True


def tail(path: Path, limit: int = 64_000) -> str:
    """The last ``limit`` bytes of a file as text ("" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def useful_line(text: str) -> str:
    """The line of a crashed program's output that says why: the last exception-looking
    line of its last run with output, else that run's last line; supervisor notes and
    blank lines skipped."""
    first, *rest = text.split(START_MARK)
    runs = [run for run in [first, *(r.partition("\n")[2] for r in rest)] if _lines(run)]
    lines = _lines(runs[-1]) if runs else []
    for line in reversed(lines):
        if _EXCEPTION.match(line):
            return line[:500]
    return lines[-1][:500] if lines else ""


def _lines(text: str) -> list[str]:
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("--- openmwaa:"):
            found.append(line)
    return found
