"""Where the folders environments use live, so that their own users can reach them.

An environment's processes run as a user of their own (:mod:`.users`), and reaching a
folder takes search (x) permission on every folder above it. The server's data dir is
its user's only (0700), and root's default one sits in ``/root`` (0700): opening
either, even to search, would let environments open any file there whose name they
guess. So :func:`expose` moves ``<data-dir>/environments`` and ``<data-dir>/runtimes``
(the shared Airflow installs) to ``<tenant base>/<instance id>/`` and leaves symlinks in
their place. The tenant base is ``/var/lib/openmwaa/tenants`` unless
``OPENMWAA_TENANT_BASE`` names another folder (tests use one of their own); the
folders made there are root's, mode 0711: others may pass through and open what
they know the name of, but not list. The server keeps using the paths in its data dir;
what the environments' processes are given must be the real paths
(:func:`tenant_root`, :func:`runtimes_root`), since the symlinks sit in a closed folder.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from pathlib import Path

from openmwaa.runtime.tenancy.users import instance_id

log = logging.getLogger(__name__)

TENANT_BASE = Path("/var/lib/openmwaa/tenants")
BASE_VARIABLE = "OPENMWAA_TENANT_BASE"
FOLDERS = {"environments": 0o711, "runtimes": 0o711}
"""The folders environments use, and their mode: passable, not listable (an install's
key is a hash of its requirements.txt, which may hold a private index's token)."""
MARKER = "data-dir"
"""A file in each instance folder naming the data dir it serves (for cleanups)."""
_MOVING = ".moving-"


class PlacementError(Exception):
    """A folder environments need cannot be made reachable; the message says why."""


def tenant_base() -> Path:
    return Path(os.environ.get(BASE_VARIABLE) or TENANT_BASE)


def closed_ancestor(path: Path) -> Path | None:
    """The topmost folder of ``path`` (resolved; itself included) that other users may not
    search, or that does not exist; None when every one of them is searchable."""
    real = Path(path).resolve()
    for part in reversed((real, *real.parents)):
        try:
            mode = os.stat(part).st_mode
        except OSError:
            return part
        if not mode & stat.S_IXOTH:
            return part
    return None


def traversable(path: Path) -> bool:
    """Whether users other than the owner can reach ``path`` (and search it)."""
    return closed_ancestor(path) is None


def tenant_root(data_dir: Path) -> Path:
    """Where the environments' folders really are (after :func:`expose`)."""
    return (Path(data_dir) / "environments").resolve()


def runtimes_root(data_dir: Path) -> Path:
    """Where the Airflow installs really are (after :func:`expose`)."""
    return (Path(data_dir) / "runtimes").resolve()


def placements_of(data_dir_prefix: str) -> list[Path]:
    """The instance folders in the tenant base made for data dirs at or under the prefix
    (a path: ``/tmp/a`` does not cover ``/tmp/ab``), by their marker file."""
    base, prefix = tenant_base(), Path(data_dir_prefix)
    found = []
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        marker = folder / MARKER
        if folder.is_symlink() or marker.is_symlink() or not marker.is_file():
            continue
        if Path(marker.read_text().strip()).is_relative_to(prefix):
            found.append(folder)
    return found


def expose(data_dir: Path) -> dict[str, Path]:
    """Make ``environments`` and ``runtimes`` of the data dir reachable by other users,
    moving them out of it when it is not; the real folder of each. Idempotent."""
    data_dir = Path(data_dir).resolve()
    instance = instance_id(data_dir)
    return {sub: _place(data_dir, sub, mode, instance) for sub, mode in FOLDERS.items()}


def _place(data_dir: Path, sub: str, mode: int, instance: str) -> Path:
    link = data_dir / sub
    target = tenant_base() / instance / sub
    if link.is_symlink():
        real = link.resolve()
        if real == target.resolve():
            return _make_target(data_dir, target, mode)
        return _linked_elsewhere(link, real, sub, mode)
    closed = closed_ancestor(data_dir)
    if closed is None:
        link.mkdir(exist_ok=True)
        _set_mode(link, mode)
        return link
    if link.exists() and not link.is_dir():
        raise PlacementError(f"{link} is not a folder")
    real = _make_target(data_dir, target, mode)
    if link.is_dir():
        _move_contents(link, real)
        link.rmdir()
    link.symlink_to(real, target_is_directory=True)
    log.info("%s moved to %s because %s is closed to other users", sub, real, closed)
    return real


def _linked_elsewhere(link: Path, real: Path, sub: str, mode: int) -> Path:
    """A symlink the operator (or a test) made: used as it is, if reachable. Only the
    runtimes folder itself gets its mode set (when the server's user owns it)."""
    if not real.is_dir():
        raise PlacementError(f"{link} links to {real}, which is not a folder")
    closed = closed_ancestor(real.parent)
    if closed is not None:
        raise PlacementError(
            f"{link} links to {real}, which other users cannot reach ({closed} is closed "
            "to them): environments could not use it"
        )
    if sub == "runtimes" and os.stat(real).st_uid == os.geteuid():
        _set_mode(real, mode)
    if not os.stat(real).st_mode & stat.S_IXOTH:
        raise PlacementError(f"{link} links to {real}, which other users cannot search")
    return real


def _make_target(data_dir: Path, target: Path, mode: int) -> Path:
    """``<base>/<instance>/<sub>``, made and checked: the base and what is made in it are
    the server user's, 0711; nothing above the base is changed."""
    base = tenant_base()
    missing = [p for p in (base, *base.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        _set_mode(folder, 0o711)
    base = base.resolve()
    _check_owned_chain(base)
    _set_mode(base, 0o711)
    closed = closed_ancestor(base)
    if closed is not None:
        raise PlacementError(
            f"the tenant base {base} cannot be reached by other users ({closed} is closed "
            f"to them): let them search it (chmod o+x) or set {BASE_VARIABLE}"
        )
    instance = base / target.parent.name
    for folder, folder_mode in ((instance, 0o711), (instance / target.name, mode)):
        if folder.is_symlink():
            raise PlacementError(f"{folder} is a symlink: remove it")
        folder.mkdir(exist_ok=True)
        _set_mode(folder, folder_mode)
    marker = instance / MARKER
    if not marker.is_file() or marker.read_text() != f"{data_dir}\n":
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{data_dir}\n")
    return instance / target.name


def _check_owned_chain(base: Path) -> None:
    """Every folder from / to the base belongs to root or the server's user, and no one
    else may rename things in it (unless it is sticky, as /tmp): otherwise another user
    could swap the folders the server writes into."""
    trusted = {0, os.geteuid()}
    for part in (base, *base.parents):
        st = os.lstat(part)
        loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX
        if st.st_uid not in trusted or loose or (part == base and not stat.S_ISDIR(st.st_mode)):
            raise PlacementError(
                f"the tenant base {base} is not safe: {part} can be changed by other users"
            )


def _set_mode(path: Path, mode: int) -> None:
    """chmod a folder the server's user owns, never through a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise PlacementError(f"{path} belongs to uid {st.st_uid}, not to the server's user")
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _move_contents(source: Path, dest: Path) -> None:
    """Move every entry of ``source`` into ``dest``: a rename on the same filesystem;
    otherwise a copy under a temporary name (owners and modes kept), renamed when
    complete, then the original removed, so an interruption loses nothing."""
    for stale in dest.glob(f"{_MOVING}*"):
        _remove(stale)
    for entry in sorted(source.iterdir()):
        final = dest / entry.name
        if final.exists() or final.is_symlink():
            raise PlacementError(f"cannot move {entry} to {dest}: {final} exists already")
        try:
            os.rename(entry, final)
            continue
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        partial = dest / f"{_MOVING}{entry.name}"
        _copy_keeping_owners(entry, partial)
        os.rename(partial, final)
        _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _copy_keeping_owners(source: Path, dest: Path) -> None:
    """Copy a file, symlink or folder tree (symlinks as symlinks, sockets and pipes
    left out), with each entry's owner and mode."""
    pairs = [(str(source), str(dest))]
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, dest, symlinks=True, copy_function=_copy_regular)
        for folder, dirs, files in os.walk(source):
            for name in dirs + files:
                path = os.path.join(folder, name)
                pairs.append((path, os.path.join(dest, os.path.relpath(path, source))))
    else:
        _copy_regular(str(source), str(dest))
    for path, copy in pairs:
        if not os.path.lexists(copy):
            continue
        st = os.lstat(path)
        os.lchown(copy, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(copy, stat.S_IMODE(st.st_mode))  # chown dropped setuid/setgid bits


def _copy_regular(source: str, dest: str) -> None:
    if os.path.islink(source) or stat.S_ISREG(os.lstat(source).st_mode):
        shutil.copy2(source, dest, follow_symlinks=False)
