"""A PostgreSQL metadata database per environment (own database and role), dropped on delete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from runtime_support import make_spec

from openmwaa.runtime import database
from openmwaa.runtime.local import LocalBackend
from openmwaa.runtime.supervisor import marked_processes, recorded_sessions

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture()
def pg_backend(data_dir: Path, install: Path) -> Iterator[LocalBackend]:
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL}: {exc}")
    b = LocalBackend(data_dir, airflow_database_url=ADMIN_URL)
    yield b
    b.shutdown()


def test_postgres_metadata_database(pg_backend: LocalBackend) -> None:
    spec = make_spec("pg-env")
    name = database.pg_name(spec.name)
    pg_backend.destroy(spec, print)  # a leftover of an interrupted run
    try:
        pg_backend.provision(spec, print)
        pg_backend.start(spec, print)
        health = pg_backend.health(spec)
        assert health.healthy, health.detail
        env = pg_backend.supervisor.components(spec.name)["scheduler"].spec.env
        conn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert conn.startswith(f"postgresql+psycopg2://{name}:") and conn.endswith(f"/{name}")
        with psycopg.connect(ADMIN_URL) as admin:
            owner = admin.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            assert owner == (name,)
        base, token = pg_backend.airflow_api(spec, "Admin")
        assert token
    finally:
        env_dir = pg_backend.layout(spec.name).root
        sessions = recorded_sessions(env_dir / "run")
        pg_backend.destroy(spec, print)
    assert not database.pg_exists(ADMIN_URL, spec.name)
    with psycopg.connect(ADMIN_URL) as admin:
        assert (
            admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None
        )
    assert marked_processes(env_dir, sessions) == []
