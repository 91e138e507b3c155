"""One OS user and group per environment, made and removed with useradd/userdel.

Names are derived from the server's data dir and the environment's name
(:func:`user_name`), so the same environment gets the same user after a restart,
two servers on one host never share a user, and a user left behind by a crash is
found again. Each user's comment is ``openmwaa <data-dir> <env>``: :func:`users_of`
finds leftovers by it, and :func:`remove_user` refuses any user whose comment does
not start with ``openmwaa `` so a name clash can never delete someone else's account.

The ids come from :data:`ID_RANGE`, far above the ranges useradd hands out as
subordinate ids (``/etc/subuid``: 100000 and up, 65536 per user): a user owning
subordinate ids that covered an environment's uid could become it in a user
namespace. :func:`isolation_problem` says so if such an overlap is configured anyway.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from openmwaa.runtime.tenancy import SETPRIV

COMMENT_PREFIX = "openmwaa "
ID_RANGE = (1_900_000_000, 1_900_999_999)
"""uids and gids of environment users: above systemd-nspawn's container range
(524288-1879048191) and useradd's subordinate ids (up to 600100000 by default)."""
NAME_MAX = 32
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"
_LOCK = threading.Lock()
"""useradd/userdel of this process one at a time (other processes: see :func:`_run`)."""
_KILL_TIMEOUT = 10.0
_LOWEST_UID = 1000
"""Never kill the processes of, nor remove, a user below this (system accounts, root)."""


class UserError(Exception):
    """An environment's user could not be made or removed; the message says why."""


@dataclass(frozen=True)
class EnvUser:
    name: str
    uid: int
    gid: int


def instance_id(data_dir: Path) -> str:
    """A short stable id of a server's data dir (its resolved path), for user names,
    cgroup names and relocated folders."""
    return hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]


def _tool(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_SBIN_PATH}")


def isolation_problem() -> str | None:
    """None when environments can have users of their own; otherwise why not, in words."""
    if os.geteuid() != 0:
        return (
            "the server does not run as root: environments run as its own user and are not "
            "isolated from each other or from the server; run it as root (see README, Isolation)"
        )
    missing = [t for t in ("useradd", "userdel", "setpriv") if not _tool(t)]
    if missing or not Path(SETPRIV).exists():
        return (
            f"{', '.join(missing) or 'setpriv'} not found (packages passwd and util-linux): "
            "environments cannot have users of their own"
        )
    for table in ("/etc/subuid", "/etc/subgid"):
        owner = _subordinate_overlap(Path(table))
        if owner:
            return (
                f"{table} gives {owner} ids in {ID_RANGE[0]}-{ID_RANGE[1]}, the range of "
                "environment users: that user could act as any environment"
            )
    return None


def _subordinate_overlap(table: Path) -> str | None:
    """The first account whose subordinate ids overlap :data:`ID_RANGE`, if any."""
    try:
        lines = table.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        start, count = int(parts[1]), int(parts[2])
        if start <= ID_RANGE[1] and start + count - 1 >= ID_RANGE[0]:
            return parts[0]
    return None


def user_name(instance: str, env: str) -> str:
    """``mwaa-<env, sanitized and cut>-<8 hex>``: a valid Linux name of at most 32
    characters, the same for the same (instance, env), different across instances."""
    digest = hashlib.sha256(f"{instance}/{env}".encode()).hexdigest()[:8]
    room = NAME_MAX - len("mwaa-") - 1 - len(digest)
    part = re.sub(r"[^a-z0-9_-]", "-", env.lower())[:room].strip("-_")
    return f"mwaa-{part}-{digest}" if part else f"mwaa-{digest}"


def clean_comment(comment: str) -> str:
    """The comment as /etc/passwd can hold it (no ``:`` nor control characters)."""
    return re.sub(r"[:\x00-\x1f\x7f]", "_", comment)


def _entry(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run useradd/userdel; when another process holds the lock on /etc/passwd or
    /etc/group (a concurrent useradd), try again a few times."""
    result = subprocess.run(argv, capture_output=True, text=True, env={"PATH": _SBIN_PATH})
    for delay in (0.1, 0.2, 0.5, 1.0, 2.0):
        if result.returncode == 0 or "lock" not in result.stderr.lower():
            break
        time.sleep(delay)
        result = subprocess.run(argv, capture_output=True, text=True, env={"PATH": _SBIN_PATH})
    return result


def ensure_user(instance: str, env: str, comment: str) -> EnvUser:
    """The environment's user, made now if missing (a system user and group of its own,
    no home, no login shell). Raises UserError when it cannot be made, or when a user
    of that name exists with another comment (never share a user by accident)."""
    name = user_name(instance, env)
    comment = clean_comment(comment)
    with _LOCK:
        found = _entry(name)
        if found is None:
            low, high = ID_RANGE
            result = _run(
                [
                    "useradd", "--system", "--user-group", "--no-create-home",
                    "--no-log-init", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--comment", comment,
                    "-K", f"SYS_UID_MIN={low}", "-K", f"SYS_UID_MAX={high}",
                    "-K", f"SYS_GID_MIN={low}", "-K", f"SYS_GID_MAX={high}",
                    name,
                ]
            )  # fmt: skip
            found = _entry(name)
            if found is None:
                raise UserError(
                    f"cannot make user {name} for environment {env}: "
                    f"{result.stderr.strip() or f'useradd exited with {result.returncode}'}"
                )
    if found.pw_gecos != comment:
        raise UserError(
            f"user {name} already exists for something else ({found.pw_gecos!r}), "
            f"not for environment {env} ({comment!r})"
        )
    return EnvUser(found.pw_name, found.pw_uid, found.pw_gid)


def lookup_user(instance: str, env: str) -> EnvUser | None:
    """The environment's user if it exists (and was made by openmwaa)."""
    found = _entry(user_name(instance, env))
    if found is None or not found.pw_gecos.startswith(COMMENT_PREFIX):
        return None
    return EnvUser(found.pw_name, found.pw_uid, found.pw_gid)


def remove_user(instance: str, env: str) -> None:
    """Kill every process of the environment's user, then delete the user and group."""
    remove_user_named(user_name(instance, env))


def remove_user_named(name: str) -> None:
    """:func:`remove_user` by user name: nothing to do when there is no such user;
    UserError when it is not an openmwaa user or cannot be removed."""
    found = _entry(name)
    if found is None:
        return
    if not found.pw_gecos.startswith(COMMENT_PREFIX) or found.pw_uid < _LOWEST_UID:
        raise UserError(f"user {name} was not made by openmwaa ({found.pw_gecos!r}): kept")
    uid, gid = found.pw_uid, found.pw_gid
    with _LOCK:
        _kill_all(uid, gid)
        result = _run(["userdel", name])  # zombies left to reap do not count as busy
        if _entry(name) is not None:
            raise UserError(f"cannot remove user {name}: {result.stderr.strip()}")
        if _group_exists(name):
            _run(["groupdel", name])


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _live_processes(uid: int) -> list[psutil.Process]:
    """Processes with ``uid`` as real, effective or saved user id (zombies left out)."""
    found = []
    for proc in psutil.process_iter(["uids", "status"]):
        uids = proc.info.get("uids")
        if uids and uid in uids and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _kill_all(uid: int, gid: int) -> None:
    """SIGKILL every process of ``uid`` until none is left. Each round first sends
    ``kill(-1)`` as that user (every process it can signal, in one go inside the
    kernel, so a forking process cannot outrun it), then kills what a scan still finds."""
    if uid < _LOWEST_UID:
        raise UserError(f"refusing to kill the processes of uid {uid}")
    deadline = time.monotonic() + _KILL_TIMEOUT
    while True:
        left = _live_processes(uid)
        if not left:
            return
        if time.monotonic() > deadline:
            pids = ", ".join(str(p.pid) for p in left[:10])
            raise UserError(f"processes of uid {uid} survive SIGKILL: {pids}")
        subprocess.run(
            [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
             "/bin/sh", "-c", "kill -KILL -1"],
            capture_output=True, env={"PATH": _SBIN_PATH},
        )  # fmt: skip
        for proc in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()  # psutil checks that the pid was not reused meanwhile
        time.sleep(0.05)


def users_of(data_dir_prefix: str) -> list[str]:
    """Names of the openmwaa users whose comment names a data dir at or under the
    prefix (a path: ``/tmp/a`` does not cover ``/tmp/ab``)."""
    prefix = Path(data_dir_prefix)
    names = []
    for entry in pwd.getpwall():
        data_dir = _data_dir_of(entry.pw_gecos)
        if data_dir is not None and data_dir.is_relative_to(prefix):
            names.append(entry.pw_name)
    return sorted(names)


def _data_dir_of(comment: str) -> Path | None:
    """The data dir of an ``openmwaa <data-dir> <env>`` comment (env names hold no space)."""
    if not comment.startswith(COMMENT_PREFIX):
        return None
    rest = comment.removeprefix(COMMENT_PREFIX)
    if " " not in rest:
        return None
    data_dir = rest.rsplit(" ", 1)[0]
    return Path(data_dir) if data_dir.startswith("/") else None
