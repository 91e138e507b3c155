"""One cgroup per environment, holding all its processes inside its class's limits.

Groups live at ``<controller>/openmwaa/<instance>/<env>`` on cgroups v1 (one folder per
controller: cpu, cpuacct, memory, pids) and at ``<delegated>/openmwaa/<instance>/<env>``
on cgroups v2, where ``<delegated>`` is the topmost cgroup this user may write on the
way to the server's own (the hierarchy's root for root, the delegated subtree for
others). ``instance`` keeps the groups of several servers on one host apart.

Nothing joins a group here: :meth:`Cgroups.ensure` returns the ``cgroup.procs`` files
that :meth:`Tenant.wrap <openmwaa.runtime.tenancy.Tenant.wrap>` writes each process
into before it execs. A limit file that is missing is logged and skipped (the others
still apply); a write refused for permission makes the whole thing unavailable, with
:attr:`Cgroups.problem` saying why, so the server can say it at start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from openmwaa.runtime.tenancy.limits import Limits, host_cpus

log = logging.getLogger(__name__)

SELF_CGROUP = Path("/proc/self/cgroup")
"""Where the kernel says which cgroups this process is in (v2: the ``0::`` line)."""

TOP = "openmwaa"
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V1_REQUIRED = ("memory", "pids", "cpu")
"""Without these an environment would not be limited; cpuacct only counts CPU time."""
V2_CONTROLLERS = ("cpu", "memory", "pids")

CFS_PERIOD_US = 100_000
SHARES_PER_CPU = 1024
WEIGHT_PER_CPU = 100
BUSY_PER_CPU = 4
"""The groups above the environments weigh as much as this many busy processes per host
CPU: against the server and the databases (each process its own weight, outside), all
environments together would otherwise weigh as one process, and run slower than they
did outside cgroups on a busy host."""
UNLIMITED = 1 << 62
"""v1 reports "no limit" as a page-aligned 2**63 - 1; anything this large is no limit."""
REMOVE_TIMEOUT = 5.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


@dataclass(frozen=True)
class Usage:
    """What an environment's cgroup uses now (``openmwaa status``, metrics)."""

    memory_bytes: int
    memory_limit: int | None
    cpu_seconds: float
    pids: int
    """Tasks: processes and their threads."""
    oom_kills: int | None
    """Processes the kernel killed for the memory limit (None: the kernel does not say)."""


class Cgroups:
    """The cgroups of one server's environments."""

    def __init__(self, instance: str, root: Path = Path("/sys/fs/cgroup")) -> None:
        _check_name(instance, "instance")
        self.instance = instance
        self.root = Path(root)
        self.available = False
        self.problem: str | None = None
        self.version: int | None = None
        self._instance_dirs: tuple[Path, ...] = ()
        """v1: ``<controller>/openmwaa/<instance>`` for each distinct controller folder;
        v2: the one ``<delegated>/openmwaa/<instance>``."""
        self._v1: dict[str, Path] = {}
        """v1: controller -> its instance folder (cpu and cpuacct may share one)."""
        self._delegated: Path | None = None
        try:
            if (self.root / "cgroup.controllers").is_file():
                self._detect_v2()
            else:
                self._detect_v1()
        except OSError as exc:
            self.problem = f"cgroups cannot be read: {exc}"
        if self.problem is None and self.version is not None:
            self.available = True

    # -- detection ---------------------------------------------------------------------

    def _detect_v1(self) -> None:
        found: dict[str, Path] = {}
        for controller in V1_CONTROLLERS:
            names = (controller, "cpu,cpuacct") if controller.startswith("cpu") else (controller,)
            for name in names:
                folder = self.root / name
                if (folder / "cgroup.procs").is_file():
                    # /sys/fs/cgroup/cpu is often a symlink to cpu,cpuacct: one folder, twice.
                    found[controller] = folder.resolve()
                    break
        if not found:
            self.problem = f"no cgroup controllers are mounted at {self.root}"
            return
        self.version = 1
        missing = [c for c in V1_REQUIRED if c not in found]
        if missing:
            self.problem = f"cgroups v1 at {self.root} lack the {', '.join(missing)} controller" + (
                "s" if len(missing) > 1 else ""
            )
            return
        self._v1 = {c: folder / TOP / self.instance for c, folder in found.items()}
        self._instance_dirs = tuple(dict.fromkeys(self._v1.values()))
        denied = sorted({str(f) for f in found.values() if not os.access(f, os.W_OK)})
        if denied:
            self.problem = (
                f"cgroups are not writable: {', '.join(denied)} (running as uid {os.getuid()})"
            )

    def _detect_v2(self) -> None:
        self.version = 2
        own = _own_v2_path()
        if own is None:
            self.problem = f"cgroups v2: {SELF_CGROUP} names no cgroup v2 for this process"
            return
        chain = [self.root]
        for part in own.parts:
            chain.append(chain[-1] / part)
        delegated = next((folder for folder in chain if _writable_v2(folder)), None)
        if delegated is None:
            self.problem = (
                f"cgroups are not writable: no cgroup from {self.root} to this server's own "
                f"({self.root / own}) may be written by uid {os.getuid()}"
            )
            return
        offered = _read(delegated / "cgroup.controllers").split()
        missing = [c for c in V2_CONTROLLERS if c not in offered]
        if missing:
            self.problem = (
                f"cgroups v2 at {delegated} do not offer the {', '.join(missing)} "
                f"controller{'s' if len(missing) > 1 else ''} (delegate them to this cgroup)"
            )
            return
        self._delegated = delegated
        self._instance_dirs = (delegated / TOP / self.instance,)

    # -- the interface -----------------------------------------------------------------

    def ensure(self, env: str, limits: Limits) -> tuple[Path, ...]:
        """Make the environment's group (if needed), set its limits (again), and return
        the ``cgroup.procs`` files its processes join; () when cgroups are not available."""
        _check_name(env, "environment")
        if not self.available:
            return ()
        try:
            if self.version == 2:
                self._make_v2(env)
                self._limit_v2(env, limits)
            else:
                self._make_v1(env)
                self._limit_v1(env, limits)
        except OSError as exc:
            if exc.errno in _DENIED:
                self._give_up(f"cgroups are not writable: {exc}")
            elif exc.errno == errno.EBUSY and self.version == 2:
                self._give_up(
                    f"cgroups v2: {exc.filename} holds processes, so it cannot hand cpu, "
                    "memory and pids to groups below it (run the server in a cgroup below "
                    "a delegated one, e.g. systemd Delegate=yes with DelegateSubgroup=)"
                )
            else:
                self._give_up(f"cgroups cannot be made: {exc}")
            return ()
        return self.procs_files(env)

    def procs_files(self, env: str) -> tuple[Path, ...]:
        """The ``cgroup.procs`` files of the environment's group, nothing made; () when
        cgroups are not available or the group (or part of it) is absent."""
        _check_name(env, "environment")
        if not self.available:
            return ()
        files = tuple(folder / "cgroup.procs" for folder in self._groups(env))
        present = [f for f in files if f.is_file()]
        if len(present) != len(files):
            if present:
                log.warning("cgroup of %s is incomplete: %s", env, [str(f) for f in present])
            return ()
        return files

    def usage(self, env: str) -> Usage | None:
        """What the environment uses now; None when cgroups were not found or the group is
        absent. Only reads (another process, ``openmwaa status``, may ask)."""
        _check_name(env, "environment")
        if self.version is None or not self._instance_dirs:
            return None
        if self.version == 2:
            return self._usage_v2(env)
        return self._usage_v1(env)

    def pids(self, env: str) -> set[int]:
        """Processes in the environment's group (any of its controller folders)."""
        _check_name(env, "environment")
        found: set[int] = set()
        for folder in self._groups(env):
            found.update(_pids_in(folder))
        return found

    def remove(self, env: str) -> None:
        """SIGKILL what is left in the environment's group (again until it is empty, for
        at most :data:`REMOVE_TIMEOUT`), then remove its folders. Idempotent."""
        _check_name(env, "environment")
        folders = [f for f in self._groups(env) if f.is_dir()]
        if not folders:
            return
        deadline = time.monotonic() + REMOVE_TIMEOUT
        while True:
            kill = folders[0] / "cgroup.kill"
            if self.version == 2 and kill.is_file():
                _try_write(kill, "1")
            for pid in self.pids(env) - {os.getpid()}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            folders = [f for f in folders if not _rmdir(f)]
            if not folders:
                return
            if time.monotonic() > deadline:
                log.warning(
                    "cgroup of %s not removed after %.0f s: %s still hold %s",
                    env,
                    REMOVE_TIMEOUT,
                    [str(f) for f in folders],
                    sorted(self.pids(env)),
                )
                return
            time.sleep(0.02)

    def environments(self) -> set[str]:
        """The environments this server has groups for."""
        return {
            group.name
            for folder in self._instance_dirs
            if folder.is_dir()
            for group in folder.iterdir()
            if group.is_dir()
        }

    def remove_instance(self) -> None:
        """Remove this server's folders (and ``openmwaa/`` itself) where they are empty."""
        for folder in self._instance_dirs:
            if folder.is_dir() and _rmdir(folder):
                _rmdir(folder.parent)

    # -- v1 ----------------------------------------------------------------------------

    def _groups(self, env: str) -> tuple[Path, ...]:
        return tuple(folder / env for folder in self._instance_dirs)

    def _make_v1(self, env: str) -> None:
        for folder in self._instance_dirs:
            _mkdir(folder.parent)
            _mkdir(folder)
            _mkdir(folder / env)
        weight = str(SHARES_PER_CPU * BUSY_PER_CPU * host_cpus())
        for parent in (self._v1["cpu"].parent, self._v1["cpu"]):
            _set(parent / "cpu.shares", weight)

    def _limit_v1(self, env: str, limits: Limits) -> None:
        memory = self._v1["memory"] / env
        # 0: the kernel kills inside the group at the limit (1 would freeze it instead).
        _set(memory / "memory.oom_control", "0")
        new = str(limits.memory_bytes)
        memsw = memory / "memory.memsw.limit_in_bytes"
        # memory <= memory+swap at every step: raise memsw first, lower it last.
        if memsw.is_file() and limits.memory_bytes >= _read_int(memsw, 0):
            _set(memsw, new)
            _set(memory / "memory.limit_in_bytes", new)
        else:
            _set(memory / "memory.limit_in_bytes", new)
            if memsw.is_file():
                _set(memsw, new)
            else:
                log.info("%s: no memory.memsw.limit_in_bytes (swap accounting off)", memory)
        cpu = self._v1["cpu"] / env
        _set(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _set(cpu / "cpu.cfs_quota_us", str(_quota(limits.cpus) or -1))
        _set(cpu / "cpu.shares", str(max(2, round(limits.cpus * SHARES_PER_CPU))))
        _set(self._v1["pids"] / env / "pids.max", str(limits.pids))

    def _usage_v1(self, env: str) -> Usage | None:
        memory = self._v1["memory"] / env
        if not memory.is_dir():
            return None
        limit = _read_int(memory / "memory.limit_in_bytes", UNLIMITED)
        cpuacct = self._v1.get("cpuacct", self._v1["cpu"]) / env
        return Usage(
            memory_bytes=_read_int(memory / "memory.usage_in_bytes", 0),
            memory_limit=limit if limit < UNLIMITED else None,
            cpu_seconds=_read_int(cpuacct / "cpuacct.usage", 0) / 1e9,
            pids=_read_int(self._v1["pids"] / env / "pids.current", 0),
            oom_kills=_keyed(memory / "memory.oom_control", "oom_kill"),
        )

    # -- v2 ----------------------------------------------------------------------------

    def _make_v2(self, env: str) -> None:
        assert self._delegated is not None
        top = self._delegated / TOP
        _enable_v2(self._delegated)
        _mkdir(top)
        _enable_v2(top)
        _mkdir(top / self.instance)
        _enable_v2(top / self.instance)
        _mkdir(top / self.instance / env)
        weight = str(min(10_000, WEIGHT_PER_CPU * BUSY_PER_CPU * host_cpus()))
        for parent in (top, top / self.instance):
            _set(parent / "cpu.weight", weight)

    def _limit_v2(self, env: str, limits: Limits) -> None:
        (group,) = self._groups(env)
        _set(group / "cpu.max", f"{_quota(limits.cpus) or 'max'} {CFS_PERIOD_US}")
        _set(group / "cpu.weight", str(min(10_000, max(1, round(limits.cpus * WEIGHT_PER_CPU)))))
        _set(group / "memory.max", str(limits.memory_bytes))
        # v2 counts swap apart: none, so that swap does not stretch the limit.
        if (group / "memory.swap.max").is_file():
            _set(group / "memory.swap.max", "0")
        _set(group / "pids.max", str(limits.pids))

    def _usage_v2(self, env: str) -> Usage | None:
        (group,) = self._groups(env)
        if not group.is_dir():
            return None
        limit = _read(group / "memory.max", "max").strip()
        usec = _keyed(group / "cpu.stat", "usage_usec")
        return Usage(
            memory_bytes=_read_int(group / "memory.current", 0),
            memory_limit=int(limit) if limit.isdigit() else None,
            cpu_seconds=(usec or 0) / 1e6,
            pids=_read_int(group / "pids.current", 0),
            oom_kills=_keyed(group / "memory.events", "oom_kill"),
        )

    def _give_up(self, problem: str) -> None:
        log.warning("%s", problem)
        self.available = False
        self.problem = problem


# -- files ---------------------------------------------------------------------------------


def _check_name(name: str, what: str) -> None:
    """Names become folder names: one plain component, never a path."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not a valid {what} name for a cgroup: {name!r}")


def _own_v2_path() -> Path | None:
    """This process's cgroup v2, relative to the hierarchy's root."""
    for line in _read(SELF_CGROUP).splitlines():
        if line.startswith("0::"):
            return Path(line[3:].strip().removesuffix(" (deleted)").lstrip("/"))
    return None


def _writable_v2(folder: Path) -> bool:
    return (
        folder.is_dir()
        and os.access(folder, os.W_OK)
        and os.access(folder / "cgroup.subtree_control", os.W_OK)
    )


def _enable_v2(folder: Path) -> None:
    """Hand cpu, memory and pids to the groups below ``folder``."""
    enabled = _read(folder / "cgroup.subtree_control").split()
    wanted = [c for c in V2_CONTROLLERS if c not in enabled]
    if wanted:
        _write(folder / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))


def _mkdir(folder: Path) -> None:
    try:
        os.mkdir(folder, 0o755)
    except FileExistsError:
        if folder.is_symlink() or not folder.is_dir():
            raise OSError(errno.ENOTDIR, "not a cgroup folder", str(folder)) from None


def _rmdir(folder: Path) -> bool:
    """Remove an (empty) cgroup folder; True when it is gone."""
    try:
        os.rmdir(folder)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _write(path: Path, value: str) -> None:
    """Write a control file as it is (never through a symlink, never creating it)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        # The kernel refuses a value at write(), which names no file: name it.
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        os.close(fd)


def _set(path: Path, value: str) -> bool:
    """Set one limit; a missing or refused file is logged and skipped, except a permission
    refusal, which is raised (cgroups are then not usable at all)."""
    try:
        _write(path, value)
    except FileNotFoundError:
        log.warning("cgroup limit not set: %s does not exist (wanted %s)", path, value)
        return False
    except OSError as exc:
        if exc.errno in _DENIED:
            raise
        log.warning("cgroup limit not set: %s = %s: %s", path, value, exc)
        return False
    return True


def _try_write(path: Path, value: str) -> None:
    try:
        _write(path, value)
    except OSError as exc:
        log.debug("%s: %s", path, exc)


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except OSError:
        return default


def _read_int(path: Path, default: int) -> int:
    try:
        return int(_read(path).strip())
    except ValueError:
        return default


def _keyed(path: Path, key: str) -> int | None:
    """The value of ``key N`` in a flat-keyed file (memory.oom_control, cpu.stat), or None."""
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def _pids_in(folder: Path) -> set[int]:
    return {int(line) for line in _read(folder / "cgroup.procs").split() if line.isdigit()}


def _quota(cpus: float) -> int | None:
    """The CFS quota in microseconds per period (the kernel takes no less than 1 ms); None
    for as many CPUs as the host has: such a quota limits nothing but still throttles
    bursts of many threads (the shares keep environments fair)."""
    if cpus >= host_cpus():
        return None
    return max(1000, round(cpus * CFS_PERIOD_US))
