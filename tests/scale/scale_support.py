"""Helpers of the production-mode tests: a Celery control plane, DAGs, reading runs back."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from live_server import NETWORK, Server, free_port, wait_status
from runtime_support import slow_dag

BUCKET = "scale-dags"
CREATE_TIMEOUT = 300
REDIS = "redis://127.0.0.1:6379/0"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"

BURST_DAG = """
import time
import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

with DAG("burst", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False):
    for i in range(int("{tasks}")):
        PythonOperator(task_id=f"t{{i}}", python_callable=lambda: time.sleep(float("{seconds}")))
"""

WHOAMI_DAG = """
import os
import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def check(**context):
    # Fails when a worker of another environment ran it: the run says whose it is.
    wanted, got = context["dag_run"].conf["env"], os.environ["AIRFLOW_ENV_NAME"]
    if got != wanted:
        raise RuntimeError(f"a task of {wanted} ran on a worker of {got}")


with DAG("whoami", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False):
    for i in range(4):
        PythonOperator(task_id=f"who{i}", python_callable=check)
"""

FAST_RECOVERY = {
    # A task whose worker died is failed (and retried) after ~30 s instead of 5 minutes.
    "scheduler.task_instance_heartbeat_timeout": "30",
    "scheduler.task_instance_heartbeat_timeout_detection_interval": "5",
}


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def celery_server(
    data_dir: Path,
    runtimes: Path,
    broker: str,
    postgres_admin: str,
    cooldown: float = 10,
    extra: tuple[str, ...] = (),
) -> Server:
    """A control plane in production mode (PostgreSQL + broker) with the test DAGs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "runtimes").symlink_to(runtimes)
    dags = data_dir / "buckets" / BUCKET / "dags"
    dags.mkdir(parents=True)
    (dags / "burst.py").write_text(BURST_DAG.format(tasks=12, seconds=10))
    (dags / "whoami.py").write_text(WHOAMI_DAG)
    (dags / "slow.py").write_text(slow_dag(40))
    server = Server(
        data_dir,
        [
            "--airflow-database-url", postgres_admin,
            "--broker-url", broker,
            "--scale-in-cooldown", str(cooldown),
            *extra,
        ],
    )  # fmt: skip
    server.start()
    return server


def create(mwaa: Any, name: str, **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "Name": name,
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/airflow",
        "SourceBucketArn": f"arn:aws:s3:::{BUCKET}",
        "DagS3Path": "dags",
        "NetworkConfiguration": NETWORK,
        "EnvironmentClass": "mw1.small",
        "MinWorkers": 1,
        "MaxWorkers": 3,
        "Schedulers": 2,
        "AirflowConfigurationOptions": FAST_RECOVERY,
    }
    request.update(overrides)
    mwaa.create_environment(**request)
    return wait_status(mwaa, name, {"AVAILABLE", "CREATE_FAILED"}, CREATE_TIMEOUT)


def status(server: Server, name: str) -> dict[str, Any]:
    """The environment's status detail as the control plane last wrote it."""
    rows = json.loads(server.cli("status", "--json").stdout)
    return next(r for r in rows if r["Name"] == name)


def workers_of(server: Server, name: str) -> dict[str, Any]:
    detail = status(server, name).get("Detail") or {}
    return dict(detail.get("workers") or {})


def rest(mwaa: Any, name: str, method: str, path: str, **extra: Any) -> Any:
    return mwaa.invoke_rest_api(Name=name, Method=method, Path=path, **extra)["RestApiResponse"]


def trigger(mwaa: Any, name: str, dag: str, conf: dict[str, Any] | None = None) -> str:
    rest(mwaa, name, "PATCH", f"/dags/{dag}", Body={"is_paused": False})
    # A short run id: InvokeRestApi paths are at most 64 characters, as on MWAA.
    body = {"dag_run_id": unique("r"), "logical_date": None, "conf": conf or {}}
    run = rest(mwaa, name, "POST", f"/dags/{dag}/dagRuns", Body=body)
    return str(run["dag_run_id"])


def wait_dag_visible(mwaa: Any, name: str, dag: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = [d["dag_id"] for d in rest(mwaa, name, "GET", "/dags")["dags"]]
        if dag in ids:
            return
        time.sleep(1)
    raise AssertionError(f"DAG {dag} not visible in {name} after {timeout} s")


def run_state(mwaa: Any, name: str, dag: str, run_id: str) -> str:
    return str(rest(mwaa, name, "GET", f"/dags/{dag}/dagRuns/{run_id}")["state"])


def task_instances(mwaa: Any, name: str, dag: str, run_id: str) -> list[dict[str, Any]]:
    answer = rest(mwaa, name, "GET", f"/dags/{dag}/dagRuns/{run_id}/taskInstances")
    return list(answer["task_instances"])


def wait_run(mwaa: Any, name: str, dag: str, run_id: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    state = "queued"
    while time.monotonic() < deadline:
        state = run_state(mwaa, name, dag, run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    raise AssertionError(f"{dag} run {run_id} in {name} still {state} after {timeout} s")


class PrivateRedis:
    """A redis-server of the test's own, to take away and bring back."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None
