"""The Python interpreter installs are built on, runnable by every environment's user.

A server run as root often has its Python under /root (pyenv), which no other user
may enter, and the system's own Python may be older than Airflow's pins allow. So the
server's interpreter is copied once, without its site-packages, into a folder every
user may read (``<tenant base>/python/``); its library search path, which names the
original folder, is rewritten to ``$ORIGIN/../lib`` in the copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from openmwaa.core.files import open_tree
from openmwaa.runtime.base import RuntimeFailure

_READY = ".openmwaa-ready"


def runnable_by_all(program: str | Path) -> bool:
    """Whether any user may run ``program`` with its libraries: it and every folder
    above its installation prefix are open to others."""
    real = Path(program).resolve()
    try:
        if not real.is_file() or not real.stat().st_mode & stat.S_IXOTH:
            return False
        prefix = real.parent.parent
        return all(part.stat().st_mode & stat.S_IXOTH for part in (prefix, *prefix.parents))
    except OSError:
        return False


def shared_copy(program: str | Path, base: Path) -> Path:
    """A copy of the interpreter ``program`` (with its standard library and shared
    library) under ``base``, open to everyone; made once per interpreter."""
    real = Path(program).resolve()
    prefix = real.parent.parent
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    digest = hashlib.sha256(str(real).encode()).hexdigest()[:10]
    target = base / "python" / f"{version}-{digest}"
    if (target / _READY).is_file():
        return target / "bin" / real.name
    for folder in (base, base / "python"):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)  # noqa: S103 - passable, not listable
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=base / "python"))
    try:
        (tmp / "bin").mkdir()
        data = real.read_bytes()
        old = str(prefix / "lib").encode() + b"\0"
        new = b"$ORIGIN/../lib\0"
        if data.count(old) == 1 and len(new) <= len(old):
            data = data.replace(old, new.ljust(len(old), b"\0"))
        (tmp / "bin" / real.name).write_bytes(data)
        os.chmod(tmp / "bin" / real.name, 0o700)
        lib = prefix / "lib"
        (tmp / "lib").mkdir()
        for entry in lib.glob("libpython*"):
            shutil.copy2(entry, tmp / "lib" / entry.name, follow_symlinks=False)
        shutil.copytree(
            lib / version,
            tmp / "lib" / version,
            symlinks=True,
            # Compiled modules come along (their sources' times kept, so they stay valid):
            # the copy's users cannot write them, and would compile on every start.
            ignore=shutil.ignore_patterns("site-packages", "test", "tests"),
        )
        (tmp / "lib" / version / "site-packages").mkdir(exist_ok=True)
        open_tree(tmp)
        (tmp / _READY).write_text(str(real) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeFailure(
            "INSTALL_FAILED",
            f"the interpreter {real} is closed to environments' users and could not be "
            f"copied to {base}: {exc}",
        ) from exc
    return target / "bin" / real.name
