"""Production mode on the real PostgreSQL and Redis: CeleryExecutor environments whose
workers follow the load, through boto3 against a live ``openmwaa serve``.

The tests run in order on two environments sharing one broker, as a platform team
would use them: a burst scales out and back, Min/Max change live, the environments
never take each other's tasks, a killed worker's task is retried.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from live_server import POSTGRES_ADMIN, Server, wait_for, wait_status
from scale_support import (
    REDIS,
    celery_server,
    create,
    task_instances,
    trigger,
    unique,
    wait_dag_visible,
    wait_run,
    workers_of,
)

from openmwaa.runtime.supervisor import read_pidfile

A = unique("scale")
B = unique("other")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, airflow_runtimes: Path) -> Iterator[Server]:
    srv = celery_server(tmp_path_factory.mktemp("celery"), airflow_runtimes, REDIS, POSTGRES_ADMIN)
    yield srv
    mwaa = srv.client()
    for name in (A, B):
        try:
            mwaa.delete_environment(Name=name)
        except mwaa.exceptions.ResourceNotFoundException:
            continue
    for name in (A, B):
        wait_for(lambda n=name: not _exists(mwaa, n), 120, f"{name} deleted")
    srv.stop()


def _exists(mwaa: Any, name: str) -> bool:
    return name in mwaa.list_environments()["Environments"]


@pytest.fixture(scope="module")
def mwaa(server: Server) -> Any:
    return server.client()


def _components(server: Server, name: str, prefix: str) -> list[psutil.Process]:
    """Live main processes of the environment's components named ``prefix``..., from the
    pid files the control plane keeps (process titles are rewritten by Airflow)."""
    found = []
    for pidfile in (server.data_dir / "environments" / name / "run").glob(f"{prefix}*.json"):
        entry = read_pidfile(pidfile)
        if entry is not None:
            found.append(entry[0])
    return found


def _worker_count(server: Server, name: str) -> int:
    return len(_components(server, name, "worker-"))


def test_created_with_celery_schedulers_and_min_workers(server: Server, mwaa: Any) -> None:
    env = create(mwaa, A)
    assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
    schedulers = _components(server, A, "scheduler")
    assert len(schedulers) == 2, "Schedulers=2 runs two schedulers on PostgreSQL"
    assert all(p.environ()["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" for p in schedulers)
    wait_for(lambda: _worker_count(server, A) == 1, 30, "MinWorkers=1 worker")
    figures = wait_for(lambda: workers_of(server, A), 30, "autoscaling figures in the status")
    assert figures["workers"] == 1 and figures["min_workers"] == 1 and figures["max_workers"] == 3


def test_burst_scales_out_to_max_and_back_without_killing_a_task(server: Server, mwaa: Any) -> None:
    wait_dag_visible(mwaa, A, "burst")
    started = time.monotonic()
    run_id = trigger(mwaa, A, "burst")  # 12 tasks of 10 s, 5 per worker: 3 workers
    seen = wait_for(lambda: _worker_count(server, A) >= 2, 30, "a second worker")
    assert seen
    reaction = time.monotonic() - started
    wait_for(lambda: _worker_count(server, A) == 3, 60, "MaxWorkers=3 workers")
    assert wait_run(mwaa, A, "burst", run_id) == "success"
    tries = {ti["task_id"]: ti["try_number"] for ti in task_instances(mwaa, A, "burst", run_id)}
    assert len(tries) == 12 and set(tries.values()) == {1}, f"a task ran twice: {tries}"
    # Cool-down is 10 s in this module; then back to MinWorkers by warm shutdown.
    wait_for(lambda: _worker_count(server, A) == 1, 90, "back to MinWorkers=1")
    figures = workers_of(server, A)
    assert figures["needed"] == 0 and figures["target"] == 1, figures
    print(f"second worker {reaction:.1f} s after the burst was triggered")


def test_min_and_max_change_without_restart(server: Server, mwaa: Any) -> None:
    scheduler_pids = {p.pid for p in _components(server, A, "scheduler")}
    mwaa.update_environment(Name=A, MinWorkers=2, MaxWorkers=4)
    env = wait_status(mwaa, A, {"AVAILABLE", "UPDATE_FAILED"}, 120)
    assert env["Status"] == "AVAILABLE" and env["MinWorkers"] == 2
    wait_for(lambda: _worker_count(server, A) == 2, 60, "MinWorkers=2 workers")
    figures = wait_for(
        lambda: (f := workers_of(server, A)) and f["max_workers"] == 4 and f, 30, "new Max"
    )
    assert figures["min_workers"] == 2
    assert {p.pid for p in _components(server, A, "scheduler")} == scheduler_pids, (
        "changing MinWorkers/MaxWorkers restarts no scheduler"
    )
    mwaa.update_environment(Name=A, MinWorkers=1, MaxWorkers=3)
    wait_status(mwaa, A, {"AVAILABLE"}, 120)
    wait_for(lambda: _worker_count(server, A) == 1, 60, "back to one worker")


def test_two_environments_never_take_each_others_tasks(server: Server, mwaa: Any) -> None:
    env = create(mwaa, B, Schedulers=2, MaxWorkers=2)
    assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
    runs = {}
    for name in (A, B):
        wait_dag_visible(mwaa, name, "whoami")
        runs[name] = trigger(mwaa, name, "whoami", {"env": name})
    for name, run_id in runs.items():
        # Each task fails if a worker of the other environment ran it.
        assert wait_run(mwaa, name, "whoami", run_id) == "success"
        states = {ti["state"] for ti in task_instances(mwaa, name, "whoami", run_id)}
        assert states == {"success"}


def test_killed_worker_task_is_retried(server: Server, mwaa: Any) -> None:
    wait_dag_visible(mwaa, A, "slow")
    run_id = trigger(mwaa, A, "slow")

    def running_task() -> psutil.Process | None:
        for worker in _components(server, A, "worker-"):
            for child in worker.children(recursive=True):
                try:
                    if "sleepy" in " ".join(child.cmdline()) or child.children():
                        return worker
                except psutil.Error:
                    continue
        return None

    def task_running() -> bool:
        tis = task_instances(mwaa, A, "slow", run_id)
        return bool(tis) and tis[0]["state"] == "running"

    wait_for(task_running, 90, "the slow task running")
    worker = wait_for(running_task, 30, "the worker running the slow task")
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its task, as a lost host
    assert wait_run(mwaa, A, "slow", run_id, timeout=300) == "success"
    (ti,) = task_instances(mwaa, A, "slow", run_id)
    assert ti["try_number"] >= 2, "the task of the killed worker ran again"
