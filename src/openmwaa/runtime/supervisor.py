"""Supervised child processes: start, watch, restart with backoff, stop (orphans.py finds strays).

Each component runs in its own process group (``start_new_session``) so a stop
reaches everything it forked (LocalExecutor workers, task processes). Its pid
and process create time are written to ``<run-dir>/<component>.json``; a
control plane that was SIGKILLed leaves those behind, and its successor uses
them (plus the ``OPENMWAA_ENV_DIR`` marker every child inherits) to adopt or
stop what is still running, so components are never duplicated nor leaked.

Components start with umask 077 and the environment of their spec, minus anything
copied from the server's own (``children.child_env``), with ``HOME`` set to their
working folder unless the spec sets it. Their logs rotate by size from the poll
loop (``logfiles.rotate``). A component that exits ``CRASH_LOOP_EXITS`` times within
``CRASH_LOOP_WINDOW`` without staying up is reported as ``crash-looping``.
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
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from openmwaa.core.files import write_atomic
from openmwaa.core.loops import PeriodicLoop
from openmwaa.runtime import logfiles
from openmwaa.runtime.children import MARKER, child_env, inherited_env, popen
from openmwaa.runtime.logfiles import tail
from openmwaa.runtime.orphans import (
    STOP_GRACE,
    marked_processes,
    read_pidfile,
    recorded_sessions,
    terminate,
)
from openmwaa.runtime.tenancy import SERVER, Tenant

log = logging.getLogger(__name__)

__all__ = [
    "MARKER",
    "STOP_GRACE",
    "Component",
    "ComponentSpec",
    "Supervisor",
    "inherited_env",
    "marked_processes",
    "read_pidfile",
    "recorded_sessions",
    "tail",
    "terminate",
]

BACKOFF_MAX = 60.0
STABLE_AFTER = 120.0
"""A component that ran this long before exiting restarts without backoff history."""
CRASH_LOOP_EXITS = 3
CRASH_LOOP_WINDOW = 300.0
"""Exits within this many seconds, each after a run shorter than STABLE_AFTER, that
make a component crash-looping."""


@dataclass
class ComponentSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    fingerprint: str = ""
    """Identifies the configuration; an orphan is adopted only when it matches."""
    tenant: Tenant = SERVER
    """Who the component runs as, in which cgroups (the environment's)."""


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
    exits: list[float] = field(default_factory=list)
    """When it exited, each after a short run (monotonic); cleared by a stable run."""
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

    def crash_looping(self, now: float) -> bool:
        """Exited CRASH_LOOP_EXITS times within CRASH_LOOP_WINDOW and not up for long since."""
        recent = [t for t in self.exits if now - t <= CRASH_LOOP_WINDOW]
        if len(recent) < CRASH_LOOP_EXITS or self.stopping:
            return False
        return self.restart_at is not None or now - self.started_at < STABLE_AFTER


def _write_json(path: Path, payload: dict[str, object]) -> None:
    write_atomic(path, json.dumps(payload).encode(), 0o600, durable=False)


class Supervisor:
    """Owns the components of every environment, grouped by environment name."""

    def __init__(
        self,
        poll_interval: float = 0.5,
        *,
        log_max_bytes: int = logfiles.LOG_MAX_BYTES,
        log_keep: int = logfiles.LOG_KEEP,
    ) -> None:
        self._groups: dict[str, dict[str, Component]] = {}
        self._lock = threading.RLock()
        self._loop = PeriodicLoop("supervisor", self._check, poll_interval, max_backoff=5.0)
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep

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
        logfiles.rotate(spec.log_path, self.log_max_bytes, self.log_keep)
        fd = os.open(spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "ab") as logfile:
            mark = f"\n{logfiles.START_MARK} {spec.name} at {time.ctime()}\n"
            logfile.write(mark.encode())
            logfile.flush()
            comp.popen = popen(
                spec.argv,
                env=child_env(spec.env, spec.cwd),
                cwd=spec.cwd,
                tenant=spec.tenant,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
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
            self._loop.start()

    def _check(self) -> None:
        now = time.monotonic()
        with self._lock:
            comps = [c for group in self._groups.values() for c in group.values()]
        for comp in comps:
            with self._lock:
                running = self._check_one(comp, now)
            if running:  # rotated outside the lock: a copy of a big log takes a moment
                logfiles.rotate(comp.spec.log_path, self.log_max_bytes, self.log_keep)

    def _check_one(self, comp: Component, now: float) -> bool:
        """Restart or record an exit of ``comp``; True when it is running."""
        if comp.stopping:
            return False
        if comp.restart_at is not None:
            if now >= comp.restart_at:
                self._spawn(comp)
            return False
        if comp.alive():
            return True
        code = comp.returncode()
        comp.exit_codes.append(code)
        self._reap_group(comp)
        if now - comp.started_at > STABLE_AFTER:
            comp.restarts = 0
            comp.exits.clear()
        else:
            comp.exits = [t for t in comp.exits if now - t <= CRASH_LOOP_WINDOW] + [now]
        if not comp.restart_on_exit:
            return False
        delay = min(BACKOFF_MAX, 2.0**comp.restarts) * random.uniform(0.5, 1.5)
        comp.restarts += 1
        comp.restart_at = now + delay
        log.warning("%s exited (code %s); restarting in %.1fs", comp.spec.name, code, delay)
        with contextlib.suppress(OSError), open(comp.spec.log_path, "ab") as fh:
            fh.write(
                f"--- openmwaa: {comp.spec.name} exited with code {code}, "
                f"restart #{comp.restarts} in {delay:.1f}s\n".encode()
            )
        return False

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
        """Component name -> "running", "restarting", "crash-looping", "stopping" or "down"."""
        states = {}
        now = time.monotonic()
        for name, comp in self.components(group).items():
            if comp.stopping:
                states[name] = "stopping"
            elif comp.crash_looping(now):
                states[name] = "crash-looping"
            elif comp.restart_at is not None:
                states[name] = "restarting"
            elif comp.alive():
                states[name] = "running"
            else:
                states[name] = "down"
        return states

    def last_log_line(self, group: str, name: str) -> str:
        """The line of a component's log that says why it failed ("" if unknown): the last
        exception-looking line of its last run that printed anything."""
        comp = self.components(group).get(name)
        if comp is None:
            return ""
        return logfiles.useful_line(tail(comp.spec.log_path, 32_000))

    def crash_looping(self, group: str) -> dict[str, str]:
        """Crash-looping components of ``group`` (workers included) -> why, for a status
        detail: how often it exited, its last exit code and its log's useful line."""
        now = time.monotonic()
        found = {}
        for name, comp in self.components(group).items():
            if comp.crash_looping(now):
                code = comp.exit_codes[-1] if comp.exit_codes else None
                window = now - comp.exits[0] if comp.exits else 0.0
                reason = f"{name} exited {len(comp.exits)} times in {window:.0f} s (code {code})"
                line = self.last_log_line(group, name)
                found[name] = f"{reason}: {line}" if line else reason
        return found

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
        self._loop.stop(timeout=5.0)
