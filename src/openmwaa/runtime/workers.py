"""Celery workers of one environment on one host, as supervised components.

Used by the local backend (workers beside the control plane) and by
``openmwaa worker`` (workers on another host). Workers are named ``worker-N``;
each has its own Celery hostname, log-server port and pid file. Scale-in
picks only workers with no running task and stops them by warm shutdown
(SIGTERM to the worker alone: Celery stops taking tasks, finishes what it
runs, and exits), so scale-in never kills a task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openmwaa.runtime.celery import WORKER_PREFIX, running_tasks, worker_argv, worker_index
from openmwaa.runtime.supervisor import Component, ComponentSpec, Supervisor, tail
from openmwaa.runtime.tenancy import SERVER, Tenant

log = logging.getLogger(__name__)

DRAIN_GRACE = 3600.0
"""How long a warm shutdown may take (the running tasks finish first)."""
STARTING_AT_ONCE = max(1, (os.cpu_count() or 2) // 2)
"""Workers starting together: each spends seconds of CPU importing Airflow, so on a
small host starting them one after the other gets the first new one taking tasks
sooner (and the rest no later)."""
READY_AFTER = 60.0
"""A worker running this long counts as ready even without its "ready." line."""


@dataclass(frozen=True)
class WorkerTemplate:
    """What every worker of one environment on this host shares."""

    airflow: str
    env: dict[str, str]
    cwd: Path
    log_dir: Path
    run_dir: Path
    queue: str
    concurrency: int
    hostname: str
    """Celery hostname stem: worker N is ``<stem>-wN@%h``."""
    fingerprint: str
    log_port: Callable[[str, bool], int]
    """A log-server port for the named worker, kept across restarts; replaced when busy
    if the second argument is true (a worker about to start, not one being adopted)."""
    tenant: Tenant = SERVER
    """Who the workers run as (the environment's user and cgroups)."""
    pid_dir: Path | None = None
    """Where Celery writes its pid files (a folder the workers' user may write; the
    server's own pid records stay in ``run_dir``); ``run_dir`` when None."""


class WorkerPool:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._templates: dict[str, WorkerTemplate] = {}
        self._lock = threading.Lock()
        self._ready: set[tuple[int | None, float]] = set()

    def configure(self, group: str, template: WorkerTemplate | None) -> None:
        """Set (or forget) the template new workers of ``group`` start from."""
        with self._lock:
            if template is None:
                self._templates.pop(group, None)
            else:
                self._templates[group] = template

    def spec(self, group: str, name: str, *, running: bool = False) -> ComponentSpec:
        """The component of worker ``name``; ``running`` for one adopted as it runs."""
        template = self._templates[group]
        index = worker_index(name)
        hostname = f"{template.hostname}-w{index}@%h"
        env = {
            **template.env,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(template.log_port(name, not running)),
        }
        return ComponentSpec(
            name=name,
            argv=[
                *worker_argv(template.airflow, template.queue, hostname, template.concurrency),
                "--pid",
                str((template.pid_dir or template.run_dir) / f"{name}.pid"),
            ],
            env=env,
            cwd=template.cwd,
            log_path=template.log_dir / f"{name}.log",
            fingerprint=template.fingerprint,
            tenant=template.tenant,
        )

    def states(self, group: str) -> dict[str, str]:
        return {
            name: state
            for name, state in self.supervisor.states(group).items()
            if name.startswith(WORKER_PREFIX)
        }

    def crash_looping(self, group: str) -> dict[str, str]:
        """Workers of ``group`` that keep exiting soon after start -> why (see
        ``Supervisor.crash_looping``); health makes the environment UNAVAILABLE for them."""
        return {
            name: reason
            for name, reason in self.supervisor.crash_looping(group).items()
            if name.startswith(WORKER_PREFIX)
        }

    def counts(self, group: str) -> tuple[int, int]:
        """(workers up, workers running at least one task); draining ones are not counted."""
        up = busy = 0
        for name, comp in self.supervisor.components(group).items():
            if not name.startswith(WORKER_PREFIX) or comp.stopping:
                continue
            up += 1
            if comp.proc is not None and comp.alive() and running_tasks(comp.proc) > 0:
                busy += 1
        return up, busy

    def is_ready(self, comp: Component) -> bool:
        """Whether a worker takes tasks yet: Celery logged "<hostname> ready." since start."""
        key = (comp.pid, comp.started_at)
        if key in self._ready:
            return True
        log = tail(comp.spec.log_path, 16_000).rsplit("--- openmwaa: starting", 1)[-1]
        if " ready." in log or time.monotonic() - comp.started_at > READY_AFTER:
            self._ready.add(key)
            return True
        return False

    def scale(self, group: str, count: int) -> None:
        """Start workers, or warm-stop idle ones, towards ``count`` workers on this host.

        At most ``STARTING_AT_ONCE`` workers start at a time; the caller asks again
        (the autoscaler every second) until ``count`` run.
        """
        if group not in self._templates:
            return
        comps = self.supervisor.components(group)
        workers = {n: c for n, c in comps.items() if n.startswith(WORKER_PREFIX)}
        active = sorted(
            (n for n, c in workers.items() if not c.stopping), key=lambda n: worker_index(n) or 0
        )
        if count > len(active):
            starting = sum(1 for n in active if not self.is_ready(workers[n]))
            room = min(count - len(active), STARTING_AT_ONCE - starting)
            if room <= 0:
                return
            used = {worker_index(n) for n in workers}
            new: list[ComponentSpec] = []
            index = 1
            while len(new) < room:
                if index not in used:
                    new.append(self.spec(group, f"{WORKER_PREFIX}{index}"))
                index += 1
            log.info("%s: starting %s", group, ", ".join(s.name for s in new))
            self.supervisor.launch(group, new, self._templates[group].run_dir, restart_on_exit=True)
            return
        surplus = len(active) - count
        for name in reversed(active):
            if surplus <= 0:
                break
            comp = workers[name]
            if comp.proc is None or running_tasks(comp.proc) > 0:
                continue  # a worker running a task is never chosen
            log.info("%s: warm shutdown of idle %s", group, name)
            self.supervisor.drain(group, name, DRAIN_GRACE)
            surplus -= 1
