"""Preparing an environment: fetch from the bucket, build the install, write the files.

``prepare`` touches nothing a running environment uses (a new install is built
while the old one runs); ``materialize`` writes what the components read
(plugins, startup script, passwords, metadata DB, DAGs) while they are stopped.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

from openmwaa.buckets import BucketError, ObjectNotFound
from openmwaa.core.files import write_atomic
from openmwaa.runtime import celery, database
from openmwaa.runtime.base import EnvironmentSpec, Progress, RuntimeFailure
from openmwaa.runtime.installs import SUPPORTED_VERSIONS, ensure_install
from openmwaa.runtime.local.components import Prepared
from openmwaa.runtime.local.context import Context
from openmwaa.runtime.local.folders import prepare_folders, share_file, share_tree
from openmwaa.runtime.local.metadb import ensure_database
from openmwaa.runtime.local.mirror import mirror_for
from openmwaa.runtime.local.state import (
    load_secrets,
    load_state,
    save_state,
    spec_dict,
    write_passwords,
)
from openmwaa.runtime.tenancy import SERVER, Tenant
from openmwaa.runtime.tenancy.limits import limits_for

PLUGINS_MAX_BYTES = 1 << 30
"""plugins.zip may unpack to at most 1 GiB (a zip bomb fills the disk otherwise)."""
PLUGINS_MAX_MEMBERS = 100_000


def fetch(
    ctx: Context, spec: EnvironmentSpec, path: str | None, version: str | None, what: str
) -> bytes | None:
    """An object of the environment's bucket (a pinned version when given); None if no path."""
    if not path:
        return None
    try:
        return ctx.store_for(spec).get_object(spec.source_bucket, path.lstrip("/"), version)
    except ObjectNotFound as exc:
        raise RuntimeFailure("S3_OBJECT_NOT_FOUND", f"{what}: {exc}") from exc
    except BucketError as exc:
        raise RuntimeFailure("S3_ACCESS_FAILED", f"{what}: {exc}") from exc


def prepare(ctx: Context, spec: EnvironmentSpec, progress: Progress) -> Prepared:
    """Fetch artifacts and build the install; touches nothing a running environment uses."""
    if ctx.broker_url:
        celery.check_broker(ctx.broker_url)
    if spec.airflow_version not in SUPPORTED_VERSIONS:
        raise RuntimeFailure(
            "UNSUPPORTED_AIRFLOW_VERSION",
            f"Airflow {spec.airflow_version} is not supported "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})",
        )
    layout = ctx.layout(spec.name)
    tenant = provision_tenant(ctx, spec)
    prepare_folders(layout, tenant)
    secrets_ = load_secrets(layout)
    ports = ctx.ports.allocate(spec.name)
    reqs_raw = fetch(
        ctx,
        spec,
        spec.requirements_s3_path,
        spec.requirements_s3_object_version,
        "requirements.txt",
    )
    requirements = reqs_raw.decode("utf-8", "replace") if reqs_raw is not None else None
    plugins = fetch(ctx, spec, spec.plugins_s3_path, spec.plugins_s3_object_version, "plugins.zip")
    if plugins is not None:
        check_plugins(plugins)
    startup = fetch(
        ctx,
        spec,
        spec.startup_script_s3_path,
        spec.startup_script_s3_object_version,
        "startup script",
    )
    ctx.check_stopping()
    install = ensure_install(
        ctx.data_dir,
        spec.airflow_version,
        requirements,
        progress,
        builder=tenant if tenant.isolated else None,
        cache=layout.home / ".cache" / "uv",
    )
    ctx.check_stopping()
    if ctx.airflow_database_url:
        conn = database.pg_airflow_url(ctx.airflow_database_url, spec.name, secrets_.db_password)
    else:
        conn = database.sqlite_url(layout.sqlite_db)
    return Prepared(spec, install, requirements, plugins, startup, secrets_, ports, conn)


def materialize(ctx: Context, prepared: Prepared, progress: Progress) -> None:
    """Write plugins, startup script, passwords, metadata DB and DAGs (components stopped)."""
    spec = prepared.spec
    layout = ctx.layout(spec.name)
    state = load_state(layout)
    tenant = ctx.tenant(spec.name)
    if state.get("plugins") != prepared.plugins_hash or not layout.plugins.is_dir():
        unpack_plugins(layout.plugins, prepared.plugins)
        share_tree(layout.plugins, tenant)
    if prepared.startup is None:
        layout.startup_script.unlink(missing_ok=True)
    else:
        write_atomic(layout.startup_script, prepared.startup, mode=0o600)
        share_file(layout.startup_script, tenant)
    write_passwords(layout, prepared.secrets, tenant.owner())
    ensure_database(ctx, prepared, state, progress)
    ctx.check_stopping()
    save_state(
        layout,
        install=str(prepared.install),
        plugins=prepared.plugins_hash,
        startup=prepared.startup_hash,
        spec=spec_dict(spec),
    )
    try:
        mirror_for(ctx, spec).sync_once()  # DAGs are in place before the components start
    except (BucketError, OSError) as exc:
        raise RuntimeFailure(
            "S3_ACCESS_FAILED", f"reading s3://{spec.source_bucket}/{spec.dag_s3_path}: {exc}"
        ) from exc


def provision_tenant(ctx: Context, spec: EnvironmentSpec) -> Tenant:
    """The environment's user (made at its first provision) and cgroups, limits per class."""
    if ctx.tenancy is None:
        return SERVER
    limits = limits_for(
        spec.environment_class, max_workers=spec.max_workers, celery=bool(ctx.broker_url)
    )
    return ctx.tenancy.provision(spec.name, limits)


def check_plugins(data: bytes) -> None:
    """Refuse a plugins.zip that is not a zip, leaves its folder or unpacks too big."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise RuntimeFailure("INCORRECT_PLUGINS", f"plugins.zip: {exc}") from exc
    if len(members) > PLUGINS_MAX_MEMBERS:
        raise RuntimeFailure(
            "INCORRECT_PLUGINS",
            f"plugins.zip has {len(members)} members; at most {PLUGINS_MAX_MEMBERS} are allowed",
        )
    total = sum(m.file_size for m in members)
    if total > PLUGINS_MAX_BYTES:
        raise RuntimeFailure(
            "INCORRECT_PLUGINS",
            f"plugins.zip unpacks to {total} bytes; at most {PLUGINS_MAX_BYTES} "
            f"({PLUGINS_MAX_BYTES >> 20} MiB) are allowed",
        )
    for member in members:
        parts = member.filename.replace("\\", "/").split("/")
        if member.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise RuntimeFailure("INCORRECT_PLUGINS", f"plugins.zip: unsafe path {member.filename}")


def unpack_plugins(target: Path, data: bytes | None) -> None:
    """Replace the plugins folder with the zip's contents (checked first)."""
    tmp = target.with_name(".plugins.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if data is not None:
        try:
            check_plugins(data)
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                # Members are read up to their declared sizes, which the check bounded.
                archive.extractall(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    old = target.with_name(".plugins.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
