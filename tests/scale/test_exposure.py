"""The server says which admin account leaves environments open to each other.

The machine's services are the open kind (PostgreSQL trusts loopback, Redis has no
password, RabbitMQ takes guest/guest from loopback); the tests' own ones need passwords.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from live_server import POSTGRES_ADMIN, Server, free_port
from private_services import private_postgres_url, private_redis_url
from scale_support import RABBITMQ, REDIS

from openmwaa.runtime import exposure

__all__ = ["private_postgres_url", "private_redis_url"]  # fixtures, used by name

TRUSTING_ADMIN = "postgresql://postgres:hunter2@127.0.0.1:5432/postgres"


def test_a_postgresql_that_trusts_loopback_is_reported_without_the_password() -> None:
    finding = exposure.check_postgres(TRUSTING_ADMIN)
    assert finding is not None
    assert finding.startswith("PostgreSQL at 127.0.0.1:5432 lets anyone on this host connect")
    assert "as postgres without a password (trust authentication)" in finding
    assert "hunter2" not in finding


def test_a_postgresql_that_wants_a_password_is_not_reported(
    private_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not even when the password is where libpq would look for it by itself.
    monkeypatch.setenv("PGPASSWORD", urlsplit(private_postgres_url).password or "")
    assert exposure.check_postgres(private_postgres_url) is None


def test_a_redis_without_a_password_is_reported() -> None:
    finding = exposure.check_broker(REDIS)
    assert finding is not None and finding.startswith("Redis at 127.0.0.1:6379 lets anyone")


def test_a_redis_with_a_password_is_not_reported(private_redis_url: str) -> None:
    assert exposure.check_broker(private_redis_url) is None


def test_a_rabbitmq_that_takes_guest_is_reported() -> None:
    finding = exposure.check_broker(RABBITMQ)
    assert finding is not None
    assert finding.startswith("RabbitMQ at 127.0.0.1:5672 takes the guest/guest login")
    assert "guest:guest" not in finding


def test_services_that_are_not_there_are_not_reported_and_answer_quickly() -> None:
    started = time.monotonic()
    port = free_port()
    assert (
        exposure.check(f"postgresql://postgres@127.0.0.1:{port}/x", f"redis://127.0.0.1:{port}/0")
        == []
    )
    assert exposure.check_broker(f"amqp://guest:guest@127.0.0.1:{port}//") is None
    assert time.monotonic() - started < 5


def _serve(data_dir: Path, postgres: str, redis: str) -> tuple[str, str, str]:
    """(server log, ``status`` output, ``status --json`` stderr) of a production-mode start."""
    server = Server(data_dir, ["--airflow-database-url", postgres, "--broker-url", redis])
    server.start()
    try:
        table = server.cli("status")
        as_json = server.cli("status", "--json")
        assert json.loads(as_json.stdout) == []  # the JSON stays machine-readable
        assert (data_dir / exposure.FILE).stat().st_mode & 0o077 == 0
        log = server.log.read_text()
    finally:
        server.stop()
    return _flat(log), _flat(table.stdout), _flat(as_json.stderr)


def _flat(text: str) -> str:
    """Whitespace evened out: rich wraps long lines to the terminal's width."""
    return " ".join(text.split())


def test_the_server_warns_at_start_and_status_repeats_it(tmp_path: Path) -> None:
    log, table, stderr = _serve(tmp_path / "open", POSTGRES_ADMIN, REDIS)
    for words in (
        "PostgreSQL at 127.0.0.1:5432 lets anyone",
        "Redis at 127.0.0.1:6379 lets anyone",
    ):
        assert words in log
        assert words in table
        assert words in stderr


def test_a_server_on_password_protected_services_warns_of_nothing(
    tmp_path: Path, private_postgres_url: str, private_redis_url: str
) -> None:
    log, table, stderr = _serve(tmp_path / "closed", private_postgres_url, private_redis_url)
    assert "lets anyone" not in log and "lets anyone" not in table and not stderr.strip()
    for secret in (urlsplit(private_postgres_url).password, urlsplit(private_redis_url).password):
        assert secret and secret not in log and secret not in table
