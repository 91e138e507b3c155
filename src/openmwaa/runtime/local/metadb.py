"""The environment's metadata database: create, migrate, snapshot before an upgrade, restore.

SQLite by default (a copy of the install's pre-migrated template), or a database
and role of its own on the server's PostgreSQL.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from openmwaa.runtime import database
from openmwaa.runtime.base import EnvironmentSpec, Progress, RuntimeFailure
from openmwaa.runtime.children import HELPERS
from openmwaa.runtime.installs import useful_error_line
from openmwaa.runtime.local.components import Prepared, component_env
from openmwaa.runtime.local.context import Context
from openmwaa.runtime.local.state import save_state


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def ensure_database(
    ctx: Context, prepared: Prepared, state: Mapping[str, object], progress: Progress
) -> None:
    """Create the database if needed and bring it to the spec's Airflow version."""
    spec = prepared.spec
    layout = ctx.layout(spec.name)
    version = spec.airflow_version
    if ctx.airflow_database_url:
        progress("creating the PostgreSQL metadata database")
        database.pg_create(ctx.airflow_database_url, spec.name, prepared.secrets.db_password)
    elif not layout.sqlite_db.exists():
        database.copy_template(prepared.install, layout.sqlite_db, ctx.tenant(spec.name).owner())
        save_state(layout, migrated=version)
        return
    migrated = state.get("migrated")
    if migrated == version:
        return
    if isinstance(migrated, str) and snapshot_or_restore(ctx, spec, migrated, progress):
        return
    progress(f"migrating the metadata database to Airflow {version}")
    migrate(ctx, prepared)
    save_state(layout, migrated=version)


def migrate(ctx: Context, prepared: Prepared) -> None:
    """``airflow db migrate``, as a helper: a stopping control plane kills it (Interrupted)."""
    layout = ctx.layout(prepared.spec.name)
    log_path = layout.logs / "db-migrate.log"
    with open(log_path, "a") as log:
        start = log.tell()
        code, _out, _err = HELPERS.run(
            [str(prepared.install / "bin" / "airflow"), "db", "migrate"],
            env=component_env(ctx, prepared),
            cwd=layout.home,
            tenant=ctx.tenant(prepared.spec.name),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if code != 0:
        with open(log_path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")[-64_000:]
        raise RuntimeFailure(
            "DATABASE_MIGRATION_FAILED",
            f"airflow db migrate failed: {useful_error_line(text)}",
        )


def snapshot_or_restore(
    ctx: Context, spec: EnvironmentSpec, migrated: str, progress: Progress
) -> bool:
    """Around a version change of an existing SQLite DB: True when restored.

    An upgrade first copies the DB as ``airflow.db.<old version>``, so a
    rollback (UpdateEnvironment back to the old version after a failure)
    restores the DB that version used instead of running it on a schema it
    does not know. Downgrades without such a copy are refused.
    """
    layout = ctx.layout(spec.name)
    target = spec.airflow_version
    db = layout.sqlite_db
    owner = ctx.tenant(spec.name).owner()
    if version_tuple(target) > version_tuple(migrated):
        if not ctx.airflow_database_url:
            progress(f"saving the Airflow {migrated} metadata database")
            database.copy_sqlite(db, db.with_name(f"airflow.db.{migrated}"), owner)
        return False
    snapshot = db.with_name(f"airflow.db.{target}")
    if ctx.airflow_database_url or not snapshot.exists():
        raise RuntimeFailure(
            "DATABASE_MIGRATION_FAILED",
            f"the metadata database is at Airflow {migrated}; "
            f"going back to {target} is not supported",
        )
    progress(f"restoring the Airflow {target} metadata database")
    database.copy_sqlite(snapshot, db, owner)
    save_state(layout, migrated=target)
    return True
