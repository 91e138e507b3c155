"""Finding an environment's processes (adopted or orphaned) and stopping whole trees.

A control plane that was SIGKILLed leaves its components running; its successor
finds them through their pid files (pid plus create time, so a reused pid is not
mistaken for one) and the ``OPENMWAA_ENV_DIR`` marker, and adopts or stops them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterable
from pathlib import Path

import psutil

from openmwaa.runtime.children import MARKER

STOP_GRACE = 20.0
"""Seconds between SIGTERM and SIGKILL when a component is stopped."""


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
