"""Supervised child processes: start, watch, restart with backoff, stop, find orphans.

Each component runs in its own process group (``start_new_session``) so a stop
reaches everything it forked (LocalExecutor workers, task processes). Its pid
and process create time are written to ``<run-dir>/<component>.json``; a
control plane that was SIGKILLed leaves those behind, and its successor uses
them (plus the ``OPENMWAA_ENV_DIR`` marker every child inherits) to adopt or
stop what is still running, so components are never duplicated nor leaked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

MARKER = "OPENMWAA_ENV_DIR"
"""Environment variable naming the environment folder a process belongs to."""

STOP_GRACE = 20.0
LOG_ROTATE_BYTES = 64 * 1024 * 1024
"""A component's log is rotated (one old copy kept) when it (re)starts past this size."""
BACKOFF_MAX = 60.0
STABLE_AFTER = 120.0
"""A component that ran this long before exiting restarts without backoff history."""
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")


def inherited_env() -> dict[str, str]:
    """The few variables of this process every component starts with; the rest of its
    environment (credentials, proxies) stays out of Airflow's."""
    return {k: os.environ[k] for k in _INHERITED if k in os.environ}


@dataclass
class ComponentSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    fingerprint: str = ""
    """Identifies the configuration; an orphan is adopted only when it matches."""


@dataclass
class Component:
    spec: ComponentSpec
    pid_path: Path
    popen: subprocess.Popen[bytes] | None = None
    proc: psutil.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    restart_on_exit: bool = True
    exit_codes: list[int | None] = field(default_factory=list)
    stopping: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        if self.proc is None:
            return False
        try:
            return self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None


def _write_json(path: Path, payload: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def read_pidfile(path: Path) -> tuple[psutil.Process, str] | None:
    """The still-running process a pid file names (create time checked), with its fingerprint."""
    try:
        data = json.loads(path.read_text())
        proc = psutil.Process(int(data["pid"]))
        if abs(proc.create_time() - float(data["create_time"])) > 0.5:
            return None  # the pid was reused by an unrelated process
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc, str(data.get("fingerprint", ""))
    except (OSError, ValueError, KeyError, psutil.Error):
        return None


def recorded_sessions(run_dir: Path) -> set[int]:
    """Session ids of the components recorded in ``run_dir`` (alive or not)."""
    sids = set()
    for pidfile in run_dir.glob("*.json") if run_dir.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            sids.add(int(json.loads(pidfile.read_text())["pid"]))
    return sids


def marked_processes(env_dir: Path, sessions: set[int] | None = None) -> list[psutil.Process]:
    """Every live process of the environment, at any depth.

    A process belongs to it when it runs in the session of a recorded component
    (each component leads its own session) or inherited the ``OPENMWAA_ENV_DIR``
    marker. Both are needed: a process may start its own session, and
    setproctitle (used by Airflow's API server and task runners) overwrites
    the memory /proc/<pid>/environ reads.
    """
    sessions = sessions if sessions is not None else recorded_sessions(env_dir / "run")
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if sessions and os.getsid(proc.pid) in sessions:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
                continue
            if proc.environ().get(MARKER) == str(env_dir):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def terminate(procs: Iterable[psutil.Process], grace: float = STOP_GRACE) -> None:
    """SIGTERM each process's group and tree, wait, then SIGKILL whatever is left."""
    roots = [p for p in procs if _running(p)]
    tree: dict[int, psutil.Process] = {}
    for root in roots:
        tree[root.pid] = root
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                tree[child.pid] = child
    if not tree:
        return
    groups = set()
    sessions = set()
    for proc in roots:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(proc.pid))
            if os.getsid(proc.pid) == proc.pid:
                sessions.add(proc.pid)
    my_group = os.getpgid(0)
    for pgid in groups - {my_group}:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGTERM)
    for proc in roots:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(roots, timeout=grace)
    # Roots are gone (or overdue); give the rest of their trees a moment, then kill.
    others = [p for pid, p in tree.items() if pid not in {r.pid for r in roots}]
    _, left = psutil.wait_procs([p for p in others if _running(p)], timeout=2)
    for pgid in groups - {my_group}:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    # Anything still in the components' sessions (new process groups included).
    strays = [p for p in _in_sessions(sessions) if p.pid not in {q.pid for q in roots}]
    for proc in [*alive, *left, *strays]:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs([*alive, *left, *strays], timeout=5)


def _in_sessions(sessions: set[int]) -> list[psutil.Process]:
    if not sessions:
        return []
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) in sessions and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tail(path: Path, limit: int = 64_000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class Supervisor:
    """Owns the components of every environment, grouped by environment name."""

    def __init__(self, poll_interval: float = 0.5) -> None:
        self._groups: dict[str, dict[str, Component]] = {}
        self._lock = threading.RLock()
        self._poll = poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- starting -------------------------------------------------------------------------

    def launch(
        self, group: str, specs: list[ComponentSpec], run_dir: Path, *, restart_on_exit: bool
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            components = self._groups.setdefault(group, {})
            for spec in specs:
                comp = Component(spec, run_dir / f"{spec.name}.json")
                comp.restart_on_exit = restart_on_exit
                self._spawn(comp)
                components[spec.name] = comp
        self._ensure_thread()

    def adopt(self, group: str, spec: ComponentSpec, run_dir: Path, proc: psutil.Process) -> None:
        with self._lock:
            comp = Component(spec, run_dir / f"{spec.name}.json", proc=proc)
            comp.started_at = time.monotonic()
            self._groups.setdefault(group, {})[spec.name] = comp
        self._ensure_thread()

    def _spawn(self, comp: Component) -> None:
        spec = comp.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if spec.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(spec.log_path, spec.log_path.with_name(spec.log_path.name + ".1"))
        with open(spec.log_path, "ab") as logfile:
            logfile.write(f"\n--- openmwaa: starting {spec.name} at {time.ctime()}\n".encode())
            logfile.flush()
            comp.popen = subprocess.Popen(
                spec.argv,
                env=spec.env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        try:
            comp.proc = psutil.Process(comp.popen.pid)
            create_time = comp.proc.create_time()
        except psutil.Error:
            comp.proc, create_time = None, 0.0
        comp.started_at = time.monotonic()
        comp.restart_at = None
        _write_json(
            comp.pid_path,
            {
                "pid": comp.popen.pid,
                "create_time": create_time,
                "fingerprint": spec.fingerprint,
                "argv": spec.argv,
            },
        )

    # -- watching -------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self._check()
            except Exception:  # the watcher must survive anything one pass hits
                log.exception("supervisor pass failed")

    def _check(self) -> None:
        now = time.monotonic()
        with self._lock:
            comps = [c for group in self._groups.values() for c in group.values()]
        for comp in comps:
            with self._lock:
                if comp.stopping:
                    continue
                if comp.restart_at is not None:
                    if now >= comp.restart_at:
                        self._spawn(comp)
                    continue
                if comp.alive():
                    continue
                code = comp.returncode()
                comp.exit_codes.append(code)
                self._reap_group(comp)
                if not comp.restart_on_exit:
                    continue
                if now - comp.started_at > STABLE_AFTER:
                    comp.restarts = 0
                delay = min(BACKOFF_MAX, 2.0**comp.restarts) * random.uniform(0.5, 1.5)
                comp.restarts += 1
                comp.restart_at = now + delay
                log.warning("%s exited (code %s); restarting in %.1fs", comp.spec.name, code, delay)
                with contextlib.suppress(OSError), open(comp.spec.log_path, "ab") as fh:
                    fh.write(
                        f"--- openmwaa: {comp.spec.name} exited with code {code}, "
                        f"restart #{comp.restarts} in {delay:.1f}s\n".encode()
                    )

    def _reap_group(self, comp: Component) -> None:
        """Kill what the dead component left in its process group (e.g. executor workers)."""
        if comp.proc is not None and comp.proc.pid != os.getpgid(0):
            with contextlib.suppress(OSError):
                os.killpg(comp.proc.pid, signal.SIGKILL)

    # -- questions ------------------------------------------------------------------------

    def components(self, group: str) -> dict[str, Component]:
        with self._lock:
            return dict(self._groups.get(group, {}))

    def states(self, group: str) -> dict[str, str]:
        states = {}
        for name, comp in self.components(group).items():
            if comp.stopping:
                states[name] = "stopping"
            elif comp.restart_at is not None:
                states[name] = "restarting"
            elif comp.alive():
                states[name] = "running"
            else:
                states[name] = "down"
        return states

    def set_restart_on_exit(self, group: str, value: bool) -> None:
        with self._lock:
            for comp in self._groups.get(group, {}).values():
                comp.restart_on_exit = value

    # -- stopping -------------------------------------------------------------------------

    def stop(self, group: str, grace: float = STOP_GRACE, names: set[str] | None = None) -> None:
        """Stop the group's components (all, or ``names``) in parallel and forget them."""
        with self._lock:
            comps = self._groups.get(group, {})
            chosen = [c for n, c in comps.items() if names is None or n in names]
            for comp in chosen:
                comp.stopping = True
        procs = [c.proc for c in chosen if c.proc is not None]
        terminate(procs, grace)
        for comp in chosen:
            if comp.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    comp.popen.wait(timeout=1)
            comp.pid_path.unlink(missing_ok=True)
        with self._lock:
            comps = self._groups.get(group, {})
            for comp in chosen:
                if comps.get(comp.spec.name) is comp:
                    del comps[comp.spec.name]
            if not comps:
                self._groups.pop(group, None)

    def drain(self, group: str, name: str, grace: float) -> None:
        """Warm-stop one component without waiting: SIGTERM to its main process alone (a
        Celery worker then finishes its tasks and exits); anything left after ``grace``
        is stopped as usual."""
        with self._lock:
            comp = self._groups.get(group, {}).get(name)
            if comp is None or comp.stopping:
                return
            comp.stopping = True
        if comp.proc is not None:
            with contextlib.suppress(psutil.Error):
                comp.proc.terminate()

        def finish() -> None:
            if comp.proc is not None:
                with contextlib.suppress(psutil.Error):
                    comp.proc.wait(grace)
            self.stop(group, grace=5.0, names={name})

        threading.Thread(target=finish, name=f"drain-{name}", daemon=True).start()

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        with self._lock:
            groups = list(self._groups)
        threads = [threading.Thread(target=self.stop, args=(g, grace)) for g in groups]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._stop.set()
