"""CPU, memory and pids limits of one environment, from MWAA's environment classes.

MWAA sizes each Fargate container of an environment by its class (one scheduler,
one web server, each worker: the same vCPUs and memory; mw1.micro: one
scheduler/worker container and one web server of 1 vCPU and 3 GB each). Here an
environment's processes share one cgroup, so its limit is the sum of the
containers that would run them: scheduler + web server + one worker on the
embedded default (tasks are children of the scheduler), scheduler + web server +
MaxWorkers workers with Celery. docs/RESOURCE_LIMITS.md has the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 1024**3

MIN_MEMORY = 2 * GIB
"""Never less: Airflow's scheduler, DAG processor, triggerer and API server take about
1 GiB idle, and an environment killed by its own limit at start is no environment."""

BASE_PIDS = 4096
"""Tasks (threads count: v1's pids controller counts every thread) for the components
themselves; they use a few hundred together."""
PIDS_PER_TASK = 32
"""Tasks per concurrent Airflow task: the task runner, the task's process, their threads
and what an operator starts (a shell, a client)."""
MAX_PIDS = 32768
"""No environment goes beyond this (a fork bomb stops here, whatever the class)."""


@dataclass(frozen=True)
class ContainerSize:
    """One MWAA container of a class: its vCPUs and memory, and the tasks a worker runs."""

    vcpus: float
    memory_bytes: int
    tasks_per_worker: int


CONTAINERS: dict[str, ContainerSize] = {
    # "Configuring the Amazon MWAA environment class" (MWAA User Guide); mw1.micro from
    # "Introducing Amazon MWAA micro environments" (scheduler/worker hybrid + web server).
    # MWAA's "GB" are Fargate sizes, which are GiB (2 GB = 2048 MiB).
    "mw1.micro": ContainerSize(1, 3 * GIB, 3),
    "mw1.small": ContainerSize(1, 2 * GIB, 5),
    "mw1.medium": ContainerSize(2, 4 * GIB, 10),
    "mw1.large": ContainerSize(4, 8 * GIB, 20),
    "mw1.xlarge": ContainerSize(8, 24 * GIB, 40),
    "mw1.2xlarge": ContainerSize(16, 48 * GIB, 80),
}

HYBRID_CLASSES = frozenset({"mw1.micro"})
"""Classes whose scheduler container also runs the (one) worker."""


@dataclass(frozen=True)
class Limits:
    """What one environment's cgroup may use."""

    cpus: float
    """vCPUs (cfs quota = cpus * period); clamped to the host's CPU count."""
    memory_bytes: int
    """Hard memory limit of the whole environment (swap included where the host has it)."""
    pids: int
    """Tasks limit (v1's pids controller counts threads, not only processes)."""


def host_cpus() -> int:
    """CPUs this server may run on (its affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def host_memory() -> int:
    """Physical memory of the host, in bytes."""
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


def containers(environment_class: str, *, max_workers: int, celery: bool) -> int:
    """How many of the class's containers the environment's processes would fill on MWAA."""
    workers = max(1, max_workers) if celery else 1
    if environment_class in HYBRID_CLASSES:
        # The scheduler/worker container holds the first worker.
        return 2 + (workers - 1)
    return 2 + workers


def limits_for(
    environment_class: str,
    *,
    max_workers: int,
    celery: bool,
    cpus_on_host: int | None = None,
    memory_on_host: int | None = None,
) -> Limits:
    """The cgroup limits of an environment of this class.

    Without Celery (LocalExecutor) one worker's share covers the tasks, which run as the
    scheduler's children; with Celery every worker up to ``max_workers`` runs in the same
    cgroup and brings its share. CPUs are clamped to the host's; memory to the host's
    physical memory (so the kernel's choice of what to kill stays inside the environment)
    but never below :data:`MIN_MEMORY`. ``cpus_on_host``/``memory_on_host`` stand in for
    the host (tests). Raises ValueError for a class MWAA does not have.
    """
    size = CONTAINERS.get(environment_class)
    if size is None:
        raise ValueError(
            f"unknown environment class {environment_class!r} (known: {', '.join(CONTAINERS)})"
        )
    count = containers(environment_class, max_workers=max_workers, celery=celery)
    workers = max(1, max_workers) if celery else 1
    cpus = min(float(size.vcpus * count), float(cpus_on_host or host_cpus()))
    memory = max(MIN_MEMORY, min(size.memory_bytes * count, memory_on_host or host_memory()))
    pids = min(MAX_PIDS, BASE_PIDS + PIDS_PER_TASK * size.tasks_per_worker * workers)
    return Limits(cpus=cpus, memory_bytes=memory, pids=pids)
