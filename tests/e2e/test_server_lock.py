"""A second ``openmwaa serve`` on the data dir of a running one exits at once, naming the
holder, and leaves its Airflow alone: the DAG run in progress finishes, the next succeeds.

(Before, the second server adopted the first one's Airflow processes, failed to bind its
port, and stopped every environment on its way out: running tasks died.)
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from live_server import NETWORK, Server, wait_for, wait_status
from runtime_support import simple_dag, slow_dag

from openmwaa.runtime.supervisor import marked_processes

NAME = "held"
BUCKET = "lock-dags"


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, airflow_runtimes: Path) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("held")
    (data_dir / "runtimes").symlink_to(airflow_runtimes)
    dags = data_dir / "buckets" / BUCKET / "dags"
    dags.mkdir(parents=True)
    (dags / "slow.py").write_text(slow_dag(20, retries=0))
    (dags / "quick.py").write_text(simple_dag("quick"))
    srv = Server(data_dir, [])
    srv.start()
    yield srv
    srv.stop()


def _components(server: Server) -> set[int]:
    """The components the server started (not their short-lived children: task runs)."""
    assert server.process is not None
    found = set()
    for proc in marked_processes(server.data_dir / "environments" / NAME):
        with contextlib.suppress(psutil.Error):
            if proc.ppid() == server.process.pid:
                found.add(proc.pid)
    return found


def _rest(mwaa: Any, method: str, path: str, **kwargs: Any) -> Any:
    return mwaa.invoke_rest_api(Name=NAME, Method=method, Path=path, **kwargs)["RestApiResponse"]


def _trigger(mwaa: Any, dag_id: str) -> str:
    wait_for(
        lambda: dag_id in {d["dag_id"] for d in _rest(mwaa, "GET", "/dags")["dags"]},
        120,
        f"DAG {dag_id}",
    )
    _rest(mwaa, "PATCH", f"/dags/{dag_id}", Body={"is_paused": False})
    return str(
        _rest(mwaa, "POST", f"/dags/{dag_id}/dagRuns", Body={"logical_date": None})["dag_run_id"]
    )


def _state(mwaa: Any, dag_id: str, run_id: str) -> str:
    return str(_rest(mwaa, "GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])


def _finished(mwaa: Any, dag_id: str, run_id: str, timeout: float) -> str:
    return str(
        wait_for(
            lambda: (state := _state(mwaa, dag_id, run_id)) in ("success", "failed") and state,
            timeout,
            f"run {run_id} of {dag_id} to finish",
        )
    )


def test_second_server_exits_and_the_first_keeps_running_its_dags(first: Server) -> None:
    mwaa = first.client()
    mwaa.create_environment(
        Name=NAME,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/airflow",
        SourceBucketArn=f"arn:aws:s3:::{BUCKET}",
        DagS3Path="dags",
        NetworkConfiguration=NETWORK,
        EnvironmentClass="mw1.micro",
    )
    env = wait_status(mwaa, NAME, {"AVAILABLE", "CREATE_FAILED"}, 300)
    assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
    slow_run = _trigger(mwaa, "slow")
    wait_for(lambda: _state(mwaa, "slow", slow_run) == "running", 120, "the slow run to start")
    assert first.process is not None
    components = _components(first)
    assert components

    second = Server(first.data_dir, [], port=first.port)  # same data dir, same settings
    started = time.monotonic()
    done = second.run_once(timeout=60)
    assert time.monotonic() - started < 20, "it exits at once, before touching anything"
    assert done.returncode != 0
    message = " ".join(done.stdout.split() + done.stderr.split())
    assert f"pid {first.process.pid} on host {socket.gethostname()}" in message, message

    assert first.process.poll() is None
    assert mwaa.get_environment(Name=NAME)["Environment"]["Status"] == "AVAILABLE"
    assert _components(first) == components, "no component was stopped or restarted"
    assert _finished(mwaa, "slow", slow_run, 180) == "success", "the running task survived"
    quick_run = _trigger(mwaa, "quick")
    assert _finished(mwaa, "quick", quick_run, 180) == "success"
    assert mwaa.get_environment(Name=NAME)["Environment"]["Status"] == "AVAILABLE"
