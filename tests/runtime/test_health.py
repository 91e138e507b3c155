"""Health checks what it claims: the broker with the environment's own credentials, and
workers that crash-loop, with real processes (a Redis with a password, the supervisor)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import POSTGRES_ADMIN, free_port, wait_for
from runtime_support import make_spec

from openmwaa.runtime import celery
from openmwaa.runtime.base import RuntimeFailure
from openmwaa.runtime.local import LocalBackend
from openmwaa.runtime.local.health import BROKER_VARIABLE
from openmwaa.runtime.supervisor import ComponentSpec

PASSWORD = "s3cret-broker-pass"


@pytest.fixture()
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of the test's own that requires a password."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(tmp_path), "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _listening(port), 10, "redis-server")
        yield f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_broker_check_uses_the_urls_credentials(redis_url: str) -> None:
    celery.check_broker(redis_url)
    wrong = redis_url.replace(PASSWORD, "wrong")
    for bad in (wrong, redis_url.replace(f":{PASSWORD}@", "")):
        with pytest.raises(RuntimeFailure) as failure:
            celery.check_broker(bad)
        assert PASSWORD not in str(failure.value) and "wrong" not in str(failure.value)
    with pytest.raises(RuntimeFailure, match="refused the URL's credentials"):
        celery.check_broker(wrong)
    with pytest.raises(RuntimeFailure, match="needs a password"):
        celery.check_broker(redis_url.replace(f":{PASSWORD}@", ""))


def _sleeper(name: str, tmp_path: Path, env: dict[str, str]) -> ComponentSpec:
    return ComponentSpec(
        name=name,
        argv=[sys.executable, "-c", "import time; time.sleep(600)"],
        env=env,
        cwd=tmp_path,
        log_path=tmp_path / "logs" / f"{name}.log",
    )


def test_environment_broker_and_crash_looping_workers(redis_url: str, tmp_path: Path) -> None:
    """The admin URL works; the environment's own (what its workers use) has a wrong
    password: unhealthy. A worker that keeps exiting is named with its error."""
    backend = LocalBackend(tmp_path, airflow_database_url=POSTGRES_ADMIN, broker_url=redis_url)
    spec = make_spec("creds")
    env_url = redis_url.replace(PASSWORD, "stale-password")
    crashing = ComponentSpec(
        name="worker-2",
        argv=[sys.executable, "-c", "raise SystemExit('ModuleNotFoundError: No module named x')"],
        env={},
        cwd=tmp_path,
        log_path=tmp_path / "logs" / "worker-2.log",
    )
    try:
        backend.supervisor.launch(
            spec.name,
            [_sleeper("scheduler", tmp_path, {BROKER_VARIABLE: env_url}), crashing],
            tmp_path / "run",
            restart_on_exit=True,
        )
        wait_for(
            lambda: backend.workers.states(spec.name).get("worker-2") == "crash-looping",
            90,
            "the worker to be crash-looping",
        )
        health = backend.health(spec)
        assert not health.healthy
        assert health.components["broker"] == "unreachable"
        assert "refused the URL's credentials" in health.detail
        assert health.components["worker-2"] == "crash-looping"
        assert "worker-2 is crash-looping: exited" in health.detail
        assert "No module named x" in health.detail
        assert "stale-password" not in health.detail and PASSWORD not in health.detail
    finally:
        backend.shutdown()


def test_amqp_broker_check_logs_in() -> None:
    """RabbitMQ: a PLAIN login up to Connection.Tune; wrong credentials are refused."""
    good = "amqp://guest:guest@127.0.0.1:5672//"
    if not _listening(5672):
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    celery.check_broker(good)
    with pytest.raises(RuntimeFailure, match="refused the URL's credentials") as failure:
        celery.check_broker(good.replace("guest@", "not-the-password@"))
    assert "not-the-password" not in str(failure.value)
