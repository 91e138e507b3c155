"""An environment's cgroup limits follow MWAA's class sizes (docs/RESOURCE_LIMITS.md)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from openmwaa.runtime.tenancy.limits import (
    CONTAINERS,
    GIB,
    MAX_PIDS,
    MIN_MEMORY,
    Limits,
    limits_for,
)
from openmwaa.service.classes import CLASSES

BIG_HOST = {"cpus_on_host": 256, "memory_on_host": 1024 * GIB}


@pytest.mark.parametrize(
    ("environment_class", "cpus", "memory_gib", "pids"),
    [
        # One scheduler/worker container and one web server, 1 vCPU and 3 GB each.
        ("mw1.micro", 2, 6, 4096 + 32 * 3),
        # Scheduler + web server + one worker.
        ("mw1.small", 3, 6, 4096 + 32 * 5),
        ("mw1.medium", 6, 12, 4096 + 32 * 10),
        ("mw1.large", 12, 24, 4096 + 32 * 20),
        ("mw1.xlarge", 24, 72, 4096 + 32 * 40),
        ("mw1.2xlarge", 48, 144, 4096 + 32 * 80),
    ],
)
def test_local_executor_gets_scheduler_web_server_and_one_worker(
    environment_class: str, cpus: float, memory_gib: int, pids: int
) -> None:
    limits = limits_for(environment_class, max_workers=10, celery=False, **BIG_HOST)
    assert limits == Limits(cpus=cpus, memory_bytes=memory_gib * GIB, pids=pids)


@pytest.mark.parametrize(
    ("environment_class", "max_workers", "cpus", "memory_gib", "pids"),
    [
        ("mw1.small", 1, 3, 6, 4096 + 32 * 5),
        ("mw1.small", 4, 6, 12, 4096 + 32 * 5 * 4),
        ("mw1.medium", 3, 10, 20, 4096 + 32 * 10 * 3),
        ("mw1.large", 10, 48, 96, 4096 + 32 * 20 * 10),
        # micro's first worker is in its scheduler container.
        ("mw1.micro", 1, 2, 6, 4096 + 32 * 3),
        # No workers asked for: still the one worker MWAA always runs.
        ("mw1.small", 0, 3, 6, 4096 + 32 * 5),
    ],
)
def test_celery_adds_one_worker_share_per_max_worker(
    environment_class: str, max_workers: int, cpus: float, memory_gib: int, pids: int
) -> None:
    limits = limits_for(environment_class, max_workers=max_workers, celery=True, **BIG_HOST)
    assert limits == Limits(cpus=cpus, memory_bytes=memory_gib * GIB, pids=pids)


def test_cpus_are_clamped_to_the_host() -> None:
    limits = limits_for("mw1.2xlarge", max_workers=25, celery=True, cpus_on_host=2)
    assert limits.cpus == 2.0
    assert limits_for("mw1.small", max_workers=1, celery=False).cpus <= (os.cpu_count() or 1)


def test_memory_is_clamped_to_the_host_but_never_below_two_gib() -> None:
    assert (
        limits_for("mw1.large", max_workers=1, celery=False, memory_on_host=16 * GIB).memory_bytes
        == 16 * GIB
    )
    tiny = limits_for("mw1.small", max_workers=1, celery=False, memory_on_host=GIB)
    assert tiny.memory_bytes == MIN_MEMORY == 2 * GIB


def test_pids_have_a_ceiling_whatever_the_size() -> None:
    huge = limits_for("mw1.2xlarge", max_workers=25, celery=True, **BIG_HOST)
    assert huge.pids == MAX_PIDS
    # Room for Airflow (its components use a few hundred tasks together), not for a bomb.
    for name in CONTAINERS:
        pids = limits_for(name, max_workers=1, celery=False).pids
        assert 4096 <= pids <= MAX_PIDS


def test_every_mwaa_class_has_a_size_and_the_same_tasks_per_worker() -> None:
    assert set(CONTAINERS) == set(CLASSES)
    for name, size in CONTAINERS.items():
        assert size.tasks_per_worker == CLASSES[name].tasks_per_worker


def test_an_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError, match=r"mw1\.huge"):
        limits_for("mw1.huge", max_workers=1, celery=False)


def test_the_documented_table_is_what_limits_for_gives() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "RESOURCE_LIMITS.md"
    text = doc.read_text().split("Limits on the embedded default", 1)[1]
    rows = re.findall(r"^\| `(mw1\.\w+)` \| (\d+) \| (\d+) GiB \| (\d+) \|$", text, re.M)
    assert {row[0] for row in rows} == set(CONTAINERS)
    for name, cpus, memory_gib, pids in rows:
        limits = limits_for(name, max_workers=1, celery=False, **BIG_HOST)
        assert limits == Limits(float(cpus), int(memory_gib) * GIB, int(pids)), name
