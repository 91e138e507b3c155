"""Brokers: RabbitMQ as well as Redis, a broker that goes away and comes back, and
services that are not there when the server starts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import POSTGRES_ADMIN, Server, free_port, wait_for, wait_status
from scale_support import (
    RABBITMQ,
    PrivateRedis,
    celery_server,
    create,
    trigger,
    unique,
    wait_dag_visible,
    wait_run,
)


def _delete(server: Server, name: str) -> None:
    mwaa = server.client()
    mwaa.delete_environment(Name=name)
    wait_for(lambda: name not in mwaa.list_environments()["Environments"], 120, "deleted")


def _run_whoami(mwaa: Any, name: str) -> None:
    wait_dag_visible(mwaa, name, "whoami")
    run_id = trigger(mwaa, name, "whoami", {"env": name})
    assert wait_run(mwaa, name, "whoami", run_id) == "success"


def test_rabbitmq_broker(tmp_path: Path, airflow_runtimes: Path) -> None:
    server = celery_server(tmp_path / "rabbit", airflow_runtimes, RABBITMQ, POSTGRES_ADMIN)
    name = unique("rabbit")
    try:
        mwaa = server.client()
        env = create(mwaa, name, MaxWorkers=1)
        assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
        _run_whoami(mwaa, name)
        _delete(server, name)
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    yield redis
    redis.stop()


def test_broker_outage_makes_the_environment_unavailable_until_it_returns(
    tmp_path: Path, airflow_runtimes: Path, private_redis: PrivateRedis
) -> None:
    server = celery_server(tmp_path / "outage", airflow_runtimes, private_redis.url, POSTGRES_ADMIN)
    name = unique("outage")
    try:
        mwaa = server.client()
        env = create(mwaa, name, MaxWorkers=1)
        assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
        private_redis.stop()
        wait_status(mwaa, name, {"UNAVAILABLE"}, 60)
        private_redis.start()
        wait_status(mwaa, name, {"AVAILABLE"}, 120)
        _run_whoami(mwaa, name)  # workers reconnected by themselves
        _delete(server, name)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "flag, url, named",
    [
        ("--broker-url", "redis://127.0.0.1:{port}/0", "redis://127.0.0.1:{port}"),
        ("--broker-url", "amqp://guest:secret@127.0.0.1:{port}//", "amqp://127.0.0.1:{port}"),
        ("--airflow-database-url", "postgresql://postgres@127.0.0.1:{port}/x", "127.0.0.1:{port}"),
    ],
)
def test_unreachable_service_at_start_is_named(
    tmp_path: Path, flag: str, url: str, named: str
) -> None:
    port = free_port()
    args = ["--airflow-database-url", POSTGRES_ADMIN, "--broker-url", "redis://127.0.0.1:6379/0"]
    args[args.index(flag) + 1] = url.format(port=port)
    proc = subprocess.run(
        [sys.executable, "-m", "openmwaa", "serve", "--data-dir", str(tmp_path),
         "--port", str(free_port()), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, output
    assert named.format(port=port) in output and "unreachable" in output, output
    assert "secret" not in output, "the broker password is never printed"
