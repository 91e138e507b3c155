"""Helpers shared by the runtime tests (a uniquely named module: tests/ has its own conftest)."""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx
from live_server import wait_for

from openmwaa.runtime.base import EnvironmentSpec
from openmwaa.runtime.installs import DEFAULT_VERSION
from openmwaa.runtime.local import LocalBackend

PIPELINE_DAG = """
import datetime
import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def ok():
    return "ok"


def flaky(ti=None):
    if ti.try_number == 1:
        raise RuntimeError("failing on purpose on the first try")
    return "recovered"


with DAG("pipeline", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False):
    left = PythonOperator(task_id="left", python_callable=ok)
    right = PythonOperator(task_id="right", python_callable=ok)
    join = PythonOperator(task_id="join", python_callable=ok)
    retry = PythonOperator(
        task_id="flaky",
        python_callable=flaky,
        retries=1,
        retry_delay=datetime.timedelta(seconds=3),
    )
    [left, right] >> join >> retry
"""


def slow_dag(seconds: float, retries: int = 2) -> str:
    """DAG ``slow``: one task ``sleepy`` sleeping ``seconds``, retried ``retries`` times."""
    return f"""
import datetime, time
import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

with DAG("slow", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False):
    PythonOperator(
        task_id="sleepy",
        python_callable=lambda: time.sleep({seconds}),
        retries={retries},
        retry_delay=datetime.timedelta(seconds=2),
    )
"""


def simple_dag(dag_id: str) -> str:
    return (
        "import pendulum\n"
        "from airflow.sdk import DAG\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        f"with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2024, 1, 1)):\n"
        "    EmptyOperator(task_id='noop')\n"
    )


def make_spec(name: str, bucket: str = "tests", **changes: Any) -> EnvironmentSpec:
    values: dict[str, Any] = {
        "name": name,
        "arn": f"arn:aws:airflow:us-east-1:123456789012:environment/{name}",
        "airflow_version": DEFAULT_VERSION,
        "environment_class": "mw1.micro",
        "tasks_per_worker": 3,
        "min_workers": 1,
        "max_workers": 2,
        "schedulers": 1,
        "min_webservers": 1,
        "max_webservers": 1,
        "source_bucket": bucket,
        "dag_s3_path": "dags",
    }
    values.update(changes)
    return EnvironmentSpec(**values)


class Api:
    """A tiny Airflow REST client with the environment's admin token."""

    def __init__(self, backend: LocalBackend, spec: EnvironmentSpec) -> None:
        self.backend = backend
        self.spec = spec

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        base, token = self.backend.airflow_api(self.spec, "Admin")
        return httpx.request(
            method,
            f"{base}/api/v2{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
            **kwargs,
        )

    def dag_ids(self) -> set[str]:
        resp = self.request("GET", "/dags", params={"limit": 1000})
        resp.raise_for_status()
        return {d["dag_id"] for d in resp.json()["dags"]}

    def run_path(self, dag_id: str, run_id: str) -> str:
        return f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


def assert_healthy(backend: LocalBackend, spec: EnvironmentSpec, within: float = 30.0) -> None:
    """Health is a moment's reading: on a loaded machine one component's heartbeat may be
    a beat late, which the reconciler also forgives; a lasting problem still fails."""
    wait_for(lambda: backend.health(spec).healthy, within, f"{spec.name} reporting healthy")
