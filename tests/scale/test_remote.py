"""Workers on another host: ``openmwaa worker`` in a network namespace of its own runs the
tasks of an environment on this host, and when that host is lost its task is retried.

The namespace reaches this host only over a private veth link: the control plane
listens on it, and forwarders relay the loopback-only PostgreSQL and Redis onto it,
so the environment's broker and database URLs are the link's addresses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from live_server import POSTGRES_ADMIN, Server, wait_for
from netns_support import Forwarder, Link, second_host
from scale_support import (
    BUCKET,
    celery_server,
    create,
    task_instances,
    trigger,
    unique,
    wait_dag_visible,
    wait_run,
    workers_of,
)

from openmwaa.agent import ControlPlane, ControlPlaneError

NAME = unique("far")

WHERE_DAG = """
import os
import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def check(**context):
    # Fails unless the task runs in the network namespace the run names.
    wanted, got = context["dag_run"].conf["network"], os.readlink("/proc/self/ns/net")
    if got != wanted:
        raise RuntimeError(f"ran in {got}, not in {wanted}")
    # A variable stored encrypted comes through the execution API (no Fernet key here).
    from airflow.sdk import Variable

    assert Variable.get("greeting") == "hello from the control plane"


with DAG("where", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False):
    for i in range(3):
        PythonOperator(task_id=f"where{i}", python_callable=check)
"""


@dataclass
class Setup:
    link: Link
    server: Server
    mwaa: Any
    agent_dir: Path


@pytest.fixture(scope="module")
def s(tmp_path_factory: pytest.TempPathFactory, airflow_runtimes: Path) -> Iterator[Setup]:
    with second_host() as link:
        pg = urlsplit(POSTGRES_ADMIN)
        postgres = Forwarder(link.host_ip, pg.port or 5432)
        redis = Forwarder(link.host_ip, 6379)
        admin = pg._replace(netloc=f"{pg.username}@{link.host_ip}:{postgres.port}").geturl()
        root = tmp_path_factory.mktemp("remote")
        server = celery_server(
            root / "control-plane",
            airflow_runtimes,
            f"redis://{link.host_ip}:{redis.port}/0",
            admin,
            extra=("--host", "0.0.0.0"),
        )
        (server.data_dir / "buckets" / BUCKET / "dags" / "where.py").write_text(WHERE_DAG)
        agent_dir = root / "worker-host"
        agent_dir.mkdir()
        (agent_dir / "runtimes").symlink_to(airflow_runtimes)
        mwaa = server.client()
        try:
            yield Setup(link, server, mwaa, agent_dir)
        finally:
            link.kill_all()
            try:
                if NAME in mwaa.list_environments()["Environments"]:
                    mwaa.delete_environment(Name=NAME)
                wait_for(
                    lambda: NAME not in mwaa.list_environments()["Environments"], 120, "deleted"
                )
            finally:
                server.stop()
                postgres.close()
                redis.close()


def start_agent(s: Setup) -> subprocess.Popen[bytes]:
    """``openmwaa worker`` inside the namespace, with the admin key, at most 1 worker."""
    creds = s.server.credentials()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": creds["key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret"],
    }
    log = open(s.agent_dir / "agent.log", "ab")  # noqa: SIM115 (the agent writes it)
    return subprocess.Popen(
        s.link.exec_argv(
            sys.executable, "-m", "openmwaa", "worker",
            "--server", f"http://{s.link.host_ip}:{s.server.port}",
            "--insecure",  # plain HTTP to a host that is not loopback: refused without it
            "--environment", NAME,
            "--name", "far",
            "--max-workers", "1",
            "--data-dir", str(s.agent_dir),
        ),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def local_workers(s: Setup) -> list[str]:
    run = s.server.data_dir / "environments" / NAME / "run"
    return sorted(p.stem for p in run.glob("worker-*.json"))


def test_workers_need_a_key_allowed_to_run_them(s: Setup) -> None:
    env = create(s.mwaa, NAME, MinWorkers=1, MaxWorkers=2)
    assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "airflow:GetEnvironment", "Resource": "*"}],
    }
    created = s.server.cli("keys", "create", "reader", "--policy", json.dumps(policy))
    key = json.loads(created.stdout)
    cp = ControlPlane(s.server.endpoint, key["AccessKeyId"], key["SecretAccessKey"], "us-east-1")
    with pytest.raises(ControlPlaneError) as denied:
        cp.call("GET", f"{NAME}/bundle")
    assert denied.value.code == "AccessDeniedException"
    assert "airflow:RunWorkers" in denied.value.message
    bad = ControlPlane(s.server.endpoint, key["AccessKeyId"], "not-the-secret", "us-east-1")
    with pytest.raises(ControlPlaneError) as forged:
        bad.call("GET", f"{NAME}/bundle")
    assert forged.value.code == "InvalidSignatureException"
    bundle = ControlPlane(s.server.endpoint, **_admin(s)).call("GET", f"{NAME}/bundle").json()
    # What only the API server needs never leaves the control plane.
    for secret in ("JWT_SECRET", "SECRET_KEY", "FERNET_KEY", "RELAY_SECRET"):
        assert not [k for k in bundle["Environment"] if k.endswith(secret)], secret
    assert bundle["Environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # The execution relay reaches this environment's Airflow only with its relay secret.
    relay = f"{s.server.endpoint}/openmwaa/workers/{NAME}/execution"
    healthy = httpx.get(f"{relay}/{bundle['RelaySecret']}/health", timeout=60)
    assert healthy.json() == {"status": "healthy"}, healthy.text
    for wrong in (f"{relay}/health", f"{relay}/{'0' * 64}/health"):
        assert httpx.get(wrong).status_code == 403


def _admin(s: Setup) -> dict[str, str]:
    creds = s.server.credentials()
    return {"key_id": creds["key"], "secret": creds["secret"], "region": "us-east-1"}


def test_a_worker_on_another_host_runs_the_tasks(s: Setup) -> None:
    start_agent(s)
    # The host that joined takes the one worker MinWorkers asks for; the control
    # plane's own worker is stopped once the host's runs.
    wait_for(lambda: workers_of(s.server, NAME).get("remote_workers") == 1, 180, "a remote worker")
    wait_for(lambda: not local_workers(s), 60, "the local worker handing over")
    wait_dag_visible(s.mwaa, NAME, "where")
    variable = {"key": "greeting", "value": "hello from the control plane"}
    s.mwaa.invoke_rest_api(Name=NAME, Method="POST", Path="/variables", Body=variable)
    run = trigger(s.mwaa, NAME, "where", {"network": s.link.network_id()})
    assert wait_run(s.mwaa, NAME, "where", run) == "success"
    tis = task_instances(s.mwaa, NAME, "where", run)
    assert {t["state"] for t in tis} == {"success"} and all(t["try_number"] == 1 for t in tis)
    assert list((s.agent_dir / "workers" / NAME / "logs").glob("worker-1.log"))


def test_a_lost_host_task_is_retried_here(s: Setup) -> None:
    wait_dag_visible(s.mwaa, NAME, "slow")
    run = trigger(s.mwaa, NAME, "slow")
    wait_for(
        lambda: [t for t in task_instances(s.mwaa, NAME, "slow", run) if t["state"] == "running"],
        120,
        "the slow task running on the other host",
    )
    assert not local_workers(s)  # so it runs over there
    s.link.kill_all()  # the host is lost with its worker and task
    wait_for(lambda: local_workers(s), 60, "a worker here replacing the lost host's")
    assert wait_run(s.mwaa, NAME, "slow", run, timeout=300) == "success"
    (ti,) = task_instances(s.mwaa, NAME, "slow", run)
    assert ti["try_number"] >= 2
    assert workers_of(s.server, NAME).get("remote_workers") == 0


def broker_keys(queue: str) -> list[str]:
    out = subprocess.run(
        ["redis-cli", "-p", "6379", "--scan", "--pattern", f"{queue}:*"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def remote_workers(s: Setup) -> list[Path]:
    return list((s.agent_dir / "workers" / NAME / "run").glob("worker-*.json"))


def test_deleting_the_environment_stops_remote_workers_and_removes_broker_keys(
    s: Setup,
) -> None:
    agent = start_agent(s)  # the host comes back
    wait_for(lambda: remote_workers(s), 120, "the host's worker again")
    arn = s.mwaa.get_environment(Name=NAME)["Environment"]["CeleryExecutorQueue"]
    queue = arn.rsplit(":", 1)[-1]
    assert broker_keys(queue), "a running environment has its queue's keys"
    s.mwaa.delete_environment(Name=NAME)
    wait_for(lambda: NAME not in s.mwaa.list_environments()["Environments"], 120, "deleted")
    wait_for(lambda: not remote_workers(s), 60, "the host stopping the deleted one's workers")
    assert agent.poll() is None  # it waits for the environment to come back
    assert broker_keys(queue) == []
