"""Worker autoscaling, as MWAA and KEDA do it.

desired = ceil((queued + running) / tasks per worker), clamped to
[MinWorkers, MaxWorkers], read every ``interval`` seconds from the
environment's own metadata DB. Scale-out is immediate; scale-in waits until
fewer workers have been enough for ``cooldown`` seconds, and the backend then
stops only workers with no running task, by warm shutdown.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from openmwaa.core.loops import PeriodicLoop
from openmwaa.runtime.base import Backend, RuntimeFailure, WorkerLoad
from openmwaa.service.environments import Environments
from openmwaa.service.worker_hosts import WorkerHosts
from openmwaa.store.db import Store
from openmwaa.store.status import SCALED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """One autoscaling decision and the figures it used (shown in the status detail)."""

    workers: int
    """Workers running when the figures were read."""
    target: int
    """Workers asked of the backend."""
    queued: int
    running: int
    busy_workers: int
    needed: int
    """ceil((queued + running) / tasks per worker), before clamping."""
    desired: int
    """``needed`` clamped to [MinWorkers, MaxWorkers]."""
    min_workers: int
    max_workers: int
    reason: str
    remote_workers: int = 0
    """Of ``workers``, those on other hosts (``openmwaa worker``)."""


def decide(
    load: WorkerLoad,
    *,
    tasks_per_worker: int,
    min_workers: int,
    max_workers: int,
    enough_since: float,
    now: float,
    cooldown: float,
) -> Decision:
    """The target worker count; ``enough_since`` is when the current count was last needed."""
    needed = load.needed(tasks_per_worker)
    desired = max(min_workers, min(max_workers, needed))
    figures = {
        "workers": load.workers,
        "queued": load.queued,
        "running": load.running,
        "busy_workers": load.busy_workers,
        "needed": needed,
        "desired": desired,
        "min_workers": min_workers,
        "max_workers": max_workers,
    }
    if desired > load.workers:
        return Decision(target=desired, reason="scale out", **figures)
    if desired == load.workers:
        return Decision(target=desired, reason="steady", **figures)
    if load.workers > max_workers or now - enough_since >= cooldown:
        return Decision(target=desired, reason="scale in", **figures)
    left = cooldown - (now - enough_since)
    return Decision(target=load.workers, reason=f"scale in after {left:.0f} s cool-down", **figures)


class Autoscaler:
    """One thread that sizes the workers of every Celery environment."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        environments: Environments,
        hosts: WorkerHosts,
        *,
        interval: float = 1.0,
        cooldown: float,
    ) -> None:
        self._store = store
        self._hosts = hosts
        self._backend = backend
        self._environments = environments
        self._cooldown = cooldown
        self._enough_since: dict[str, float] = {}
        self._decisions: dict[str, Decision] = {}
        self._loop = PeriodicLoop(
            "autoscaler", self.tick, interval, max_backoff=30.0, run_first=False
        )

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def status(self, name: str) -> dict[str, Any] | None:
        """The last decision for ``name`` (None when it has no autoscaled workers)."""
        decision = self._decisions.get(name)
        return asdict(decision) if decision else None

    def tick(self) -> None:
        """One pass over every environment (a failing pass is retried with backoff)."""
        names = set()
        for row in self._store.environments():
            if row.status not in SCALED or row.applied is None:
                continue
            names.add(row.name)
            spec = self._environments.spec_of(row.name, row.applied)
            try:
                local = self._backend.worker_load(spec)
            except RuntimeFailure as exc:
                log.warning("environment %s: cannot read the worker load: %s", row.name, exc)
                continue
            if local is None:
                continue
            remote = self._hosts.live(row.name)
            load = replace(
                local,
                workers=local.workers + sum(h.workers for h in remote),
                busy_workers=local.busy_workers + sum(h.busy for h in remote),
            )
            now = time.monotonic()
            since = self._enough_since.setdefault(row.name, now)
            decision = replace(
                decide(
                    load,
                    tasks_per_worker=spec.tasks_per_worker,
                    min_workers=spec.min_workers,
                    max_workers=spec.max_workers,
                    enough_since=since,
                    now=now,
                    cooldown=self._cooldown,
                ),
                remote_workers=load.workers - local.workers,
            )
            if decision.desired >= load.workers:
                self._enough_since[row.name] = now  # the cool-down starts when load drops
            previous = self._decisions.get(row.name)
            if decision.target != load.workers or (
                previous is not None and previous.workers != load.workers
            ):
                log.info(
                    "environment %s: %s: %d -> %d workers (%d on other hosts; queued %d, "
                    "running %d, %d per worker, min %d, max %d)",
                    row.name,
                    decision.reason,
                    load.workers,
                    decision.target,
                    decision.remote_workers,
                    load.queued,
                    load.running,
                    spec.tasks_per_worker,
                    spec.min_workers,
                    spec.max_workers,
                )
            self._decisions[row.name] = decision
            here = self._hosts.assign(row.name, decision.target, local.workers)
            if here != local.workers:
                self._backend.set_workers(spec, here)
        for gone in set(self._decisions) - names:
            self._decisions.pop(gone, None)
            self._enough_since.pop(gone, None)
            self._hosts.forget(gone)
