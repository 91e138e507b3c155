"""Each environment's PostgreSQL role reaches its own metadata database only.

Run on a cluster of the test's own (scram-sha-256, a superuser with a password): on the
machine's cluster, which trusts loopback, any role could log in as ``postgres`` anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from live_server import wait_for
from private_services import private_postgres_url
from psycopg import sql
from scale_support import REDIS, celery_server, create, trigger, unique, wait_dag_visible, wait_run
from sqlalchemy.engine import make_url

from openmwaa.runtime import database

__all__ = ["private_postgres_url"]  # fixtures, used by name


def _as_environment(admin_url: str, env_name: str, password: str, dbname: str) -> str:
    """A libpq URL: the environment's role and password, any database."""
    url = make_url(database.pg_airflow_url(admin_url, env_name, password))
    return url.set(drivername="postgresql", database=dbname).render_as_string(False)


def test_a_role_connects_to_its_own_database_only(private_postgres_url: str) -> None:
    admin = private_postgres_url
    a, b = unique("dba"), unique("dbb")
    database.pg_create(admin, a, "secret-a")
    database.pg_create(admin, b, "secret-b")
    try:
        own = _as_environment(admin, a, "secret-a", database.pg_name(a))
        with psycopg.connect(own, autocommit=True) as conn:
            # What `airflow db migrate` needs: tables in the public schema.
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(_as_environment(admin, a, "secret-a", database.pg_name(b))).close()
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(_as_environment(admin, b, "secret-b", database.pg_name(a))).close()
        # Inside: PUBLIC has no rights on the public schema (an "=..." ACL item is PUBLIC's).
        inside = make_url(admin).set(drivername="postgresql", database=database.pg_name(a))
        with psycopg.connect(inside.render_as_string(False)) as conn:
            row = conn.execute(
                "SELECT nspacl::text[] FROM pg_namespace WHERE nspname = 'public'"
            ).fetchone()
        assert row is not None and not [item for item in row[0] or [] if item.startswith("=")]
    finally:
        database.pg_drop(admin, a)
        database.pg_drop(admin, b)


def test_an_existing_open_database_is_closed_at_the_next_start(
    private_postgres_url: str,
) -> None:
    """An environment made before the revocation existed: provision/start (pg_create
    again) closes its database without touching what is in it."""
    admin = private_postgres_url
    old, other = unique("dbold"), unique("dbother")
    name = database.pg_name(old)
    with psycopg.connect(admin, autocommit=True) as conn:  # as older versions made it
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'p1'").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(*[sql.Identifier(name)] * 2))
    database.pg_create(admin, other, "secret-o")
    try:
        with psycopg.connect(_as_environment(admin, old, "p1", name), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
        intruder = _as_environment(admin, other, "secret-o", name)
        psycopg.connect(intruder).close()  # open before, as the issue found it
        database.pg_create(admin, old, "p2")
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(intruder).close()
        with psycopg.connect(_as_environment(admin, old, "p2", name)) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
        database.pg_create(admin, old, "p2")  # idempotent
    finally:
        database.pg_drop(admin, old)
        database.pg_drop(admin, other)


def test_production_mode_runs_on_a_password_protected_cluster(
    tmp_path: Path, airflow_runtimes: Path, private_postgres_url: str
) -> None:
    """End to end: migrate, schedule and run a task on the closed database (Celery on the
    machine's Redis), then delete the environment (database and role dropped)."""
    server = celery_server(tmp_path / "cp", airflow_runtimes, REDIS, private_postgres_url)
    name = unique("iso")
    try:
        mwaa: Any = server.client()
        env = create(mwaa, name, MaxWorkers=1, Schedulers=2)
        assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
        wait_dag_visible(mwaa, name, "whoami")
        run_id = trigger(mwaa, name, "whoami", {"env": name})
        assert wait_run(mwaa, name, "whoami", run_id) == "success"
        mwaa.delete_environment(Name=name)
        wait_for(lambda: name not in mwaa.list_environments()["Environments"], 120, "deleted")
        assert not database.pg_exists(private_postgres_url, name)
    finally:
        server.stop()
