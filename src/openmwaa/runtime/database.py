"""Metadata databases: SQLite per environment by default, or PostgreSQL by URL.

SQLite databases are copies of the install's migrated template (no 5 s
``airflow db migrate`` per environment). With a PostgreSQL admin URL each
environment gets its own database and its own role with a generated password,
both dropped when the environment is deleted. No other role may connect to an
environment's database (CONNECT and TEMPORARY revoked from PUBLIC), so one
environment's credentials never open another's; the revocation is applied again at
every provision and start, which also closes databases made by older versions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import sqlite3
from pathlib import Path

from openmwaa.runtime.base import RuntimeFailure
from openmwaa.runtime.installs import TEMPLATE_DB

log = logging.getLogger(__name__)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def copy_template(install: Path, target: Path, owner: tuple[int, int] | None = None) -> None:
    """Create ``target`` from the install's migrated template, atomically (given to
    ``owner``, the environment's user, before it appears)."""
    tmp = _exclusive_tmp(target, owner)
    try:
        with open(install / TEMPLATE_DB, "rb") as src, open(tmp, "r+b") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_sqlite(source: Path, target: Path, owner: tuple[int, int] | None = None) -> None:
    """A consistent copy of a SQLite DB (its components are stopped), atomically.

    Both may sit in a folder the environment's user writes: a link planted in place of
    the source is refused (the server would copy what it points to), and the copy is
    made in a fresh file of its own, never through a planted name."""
    if source.is_symlink():
        raise OSError(f"{source} is a symbolic link; refusing to copy it")
    tmp = _exclusive_tmp(target, owner)
    try:
        with sqlite3.connect(source) as src, sqlite3.connect(tmp) as dst:
            src.backup(dst)
        # A write-ahead log or journal left by the replaced DB would be replayed onto the copy.
        for leftover in ("-wal", "-shm", "-journal"):
            target.with_name(target.name + leftover).unlink(missing_ok=True)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _exclusive_tmp(target: Path, owner: tuple[int, int] | None) -> Path:
    """A new empty file beside ``target`` with a name nobody could have planted."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)
    return tmp


def pg_name(env_name: str) -> str:
    """A PostgreSQL identifier for the environment's database and role (also its owner)."""
    slug = re.sub(r"[^a-z0-9_]", "_", env_name.lower())[:40]
    digest = hashlib.sha256(env_name.encode()).hexdigest()[:8]
    return f"openmwaa_{slug}_{digest}"


def _admin_conninfo(admin_url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", admin_url)


def pg_airflow_url(admin_url: str, env_name: str, password: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(_admin_conninfo(admin_url))
    return url.set(
        drivername="postgresql+psycopg2",
        username=pg_name(env_name),
        password=password,
        database=pg_name(env_name),
    ).render_as_string(hide_password=False)


def _database_conninfo(admin_url: str, database: str) -> str:
    """The admin URL pointed at another database of the same server."""
    from sqlalchemy.engine import make_url

    url = make_url(_admin_conninfo(admin_url)).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


def pg_create(admin_url: str, env_name: str, password: str) -> None:
    """Create (or update the password of) the environment's role and database, and make
    the database the role's alone: every role may connect to a new database by default
    (PUBLIC holds CONNECT), so without the revocation environment A's credentials would
    open environment B's metadata (connections, variables, task tokens' targets)."""
    import psycopg
    from psycopg import sql

    name = pg_name(env_name)
    ident = sql.Identifier(name)
    try:
        with psycopg.connect(_admin_conninfo(admin_url), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(
                    verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
                ).format(ident, sql.Literal(password))
            )
            has_db = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not has_db:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
            conn.execute(
                sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident)
            )
            conn.execute(
                sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(ident, ident)
            )
        _own_public_schema(admin_url, name)
    except psycopg.Error as exc:
        raise RuntimeFailure(
            "DATABASE_FAILED", f"creating the metadata database failed: {exc}".strip()
        ) from exc


def _own_public_schema(admin_url: str, name: str) -> None:
    """Inside the database, the public schema is the role's and PUBLIC has no rights on
    it (before PostgreSQL 15 the admin owns it and every role may create in it)."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(_database_conninfo(admin_url, name), autocommit=True) as conn:
            row = conn.execute(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'"
            ).fetchone()
            if row is not None and row[0] not in (name, "pg_database_owner"):
                conn.execute(
                    sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(name))
                )
            conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    except psycopg.errors.InsufficientPrivilege as exc:
        # An admin that is not a superuser: the database is closed to others all the same.
        log.warning("could not take the public schema of %s from PUBLIC: %s", name, exc)


def pg_check(admin_url: str) -> None:
    """Raise RuntimeFailure DATABASE_UNREACHABLE unless the admin URL connects."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(_admin_conninfo(admin_url))
    where = f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"
    try:
        with psycopg.connect(_admin_conninfo(admin_url), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeFailure(
            "DATABASE_UNREACHABLE",
            f"the PostgreSQL server {where} is unreachable ({reason}); "
            "start it or fix --airflow-database-url",
        ) from exc


def pg_drop(admin_url: str, env_name: str) -> None:
    import psycopg
    from psycopg import sql

    name = pg_name(env_name)
    with psycopg.connect(_admin_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def pg_exists(admin_url: str, env_name: str) -> bool:
    import psycopg

    with psycopg.connect(_admin_conninfo(admin_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (pg_name(env_name),)
        ).fetchone()
    return row is not None
