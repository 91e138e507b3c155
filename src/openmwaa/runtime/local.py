"""The local backend: real Airflow environments as supervised processes on this host.

Layout of one environment, ``<data-dir>/environments/<name>/``::

    airflow/        AIRFLOW_HOME: dags/ (mirrored from the bucket), plugins/,
                    logs/ (task logs), airflow.db (SQLite metadata DB)
    logs/           one log per component, one per startup-script run
    run/            pid files (pid + create time + configuration fingerprint)
    secrets.json    keys and passwords (0600), never logged
    state.json      what was provisioned (install, migrated version, artifacts)
    startup.sh      the startup script, when there is one

Components (scheduler, dag-processor, triggerer, api-server) run from the
environment's Airflow install, never inside the control plane's interpreter.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from openmwaa.buckets import BucketError, BucketStore, ObjectNotFound, open_store
from openmwaa.buckets.sync import DagMirror
from openmwaa.core.files import write_atomic
from openmwaa.runtime import celery, database
from openmwaa.runtime.base import (
    EnvironmentSpec,
    Health,
    Progress,
    RuntimeFailure,
    WorkerBundle,
    WorkerLoad,
)
from openmwaa.runtime.bundles import portable_env
from openmwaa.runtime.config import ROLES, Ports, Secrets, airflow_environment
from openmwaa.runtime.installs import SUPPORTED_VERSIONS, ensure_install, useful_error_line
from openmwaa.runtime.ports import PortRegistry, port_is_free
from openmwaa.runtime.startup import run_startup_script
from openmwaa.runtime.supervisor import (
    MARKER,
    ComponentSpec,
    Supervisor,
    inherited_env,
    marked_processes,
    read_pidfile,
    recorded_sessions,
    tail,
    terminate,
)
from openmwaa.runtime.workers import WorkerPool, WorkerTemplate

log = logging.getLogger(__name__)

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
MWAA_COMPONENT = {
    "scheduler": "scheduler",
    "dag-processor": "scheduler",
    "triggerer": "scheduler",
    "api-server": "webserver",
    "worker": "worker",
}
"""Component -> the MWAA_AIRFLOW_COMPONENT its startup-script run sees."""
MAX_WORKERS_CAP = 25
"""MWAA's upper bound of MaxWorkers: Celery environments size parallelism for it, so
a MaxWorkers change restarts nothing (the autoscaler alone enforces MaxWorkers)."""
HEALTH_KEYS = {
    "metadatabase": "metadatabase",
    "scheduler": "scheduler",
    "dag_processor": "dag-processor",
    "triggerer": "triggerer",
}
START_TIMEOUT = 240.0
"""start() waits this long for all-healthy; later the reconciler's health polls take over."""
ABORT_GRACE = 5.0
"""A start that failed has nothing worth a graceful stop."""


def _digest(data: bytes | str | None) -> str | None:
    if data is None:
        return None
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


@dataclass
class _Prepared:
    """Everything fetched and built for a spec, before anything live is touched."""

    spec: EnvironmentSpec
    install: Path
    requirements: str | None
    plugins: bytes | None
    startup: bytes | None
    secrets: Secrets
    ports: Ports
    sql_alchemy_conn: str

    @property
    def plugins_hash(self) -> str | None:
        return _digest(self.plugins)

    @property
    def startup_hash(self) -> str | None:
        return _digest(self.startup)


@dataclass
class _Env:
    """What the backend holds in memory for one environment."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    mirror: DagMirror | None = None
    fingerprint: str | None = None
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    bundle: WorkerBundle | None = None
    """What workers on other hosts run from, once the environment runs Celery workers."""


class LocalBackend:
    """Runs each environment's Airflow components as supervised local processes."""

    def __init__(
        self,
        data_dir: Path,
        *,
        bucket_store: str = "local",
        airflow_database_url: str | None = None,
        broker_url: str | None = None,
        store: BucketStore | None = None,
    ) -> None:
        if broker_url and not airflow_database_url:
            raise ValueError("Celery workers need a PostgreSQL metadata database URL too")
        self.data_dir = Path(data_dir)
        self.store = store or open_store(bucket_store, self.data_dir)
        self.airflow_database_url = airflow_database_url
        self.broker_url = broker_url
        """Production mode (CeleryExecutor) when set; LocalExecutor otherwise."""
        self.ports = PortRegistry(self.data_dir)
        # One client for health checks and tokens: a client per call builds a TLS context
        # each time (15-20 ms of CPU, most of an idle server's), and loopback needs no proxy.
        self._http = httpx.Client(trust_env=False)
        self.supervisor = Supervisor()
        self.workers = WorkerPool(self.supervisor)
        self._envs: dict[str, _Env] = {}
        self._envs_lock = threading.Lock()

    # -- the Backend protocol ----------------------------------------------------------------

    def supported_versions(self) -> list[str]:
        return list(SUPPORTED_VERSIONS)

    def provision(self, spec: EnvironmentSpec, progress: Progress) -> None:
        with self._env(spec.name).lock:
            prepared = self._prepare(spec, progress)
            self._materialize(prepared, progress)

    def start(self, spec: EnvironmentSpec, progress: Progress) -> None:
        env = self._env(spec.name)
        with env.lock:
            if self._running(spec.name):
                self._start_mirror(spec)
                return
            if not (self._dir(spec.name) / "state.json").exists():
                self.provision(spec, progress)
            prepared = self._prepare(spec, progress)
            self._materialize(prepared, progress)
            if not self._adopt(prepared):
                self._launch(prepared, progress)
            self._start_mirror(spec)

    def apply(self, old: EnvironmentSpec, new: EnvironmentSpec, progress: Progress) -> None:
        env = self._env(new.name)
        with env.lock:
            if (old.source_bucket, old.dag_s3_path) != (new.source_bucket, new.dag_s3_path):
                progress("re-pointing the DAG mirror")
                self._stop_mirror(new.name)
                self._start_mirror(new)
            prepared = self._prepare(new, progress)  # new install built while the old one runs
            running = self._running(new.name)
            if running and env.fingerprint == self._fingerprint(prepared):
                self._save_state(new.name, spec=_spec_dict(new))
                return
            if running:
                progress("stopping Airflow components")
                self.supervisor.stop(new.name)
            self._materialize(prepared, progress)
            self._launch(prepared, progress)

    def health(self, spec: EnvironmentSpec) -> Health:
        states = self.supervisor.states(spec.name)
        names = self._component_names(spec)
        if not states:
            return Health(False, "Airflow is not running", {c: "down" for c in names})
        components = {
            c: ("healthy" if states.get(c) == "running" else states.get(c, "down")) for c in names
        }
        problems = [f"{c} is {s}" for c, s in components.items() if s != "healthy"]
        if self.broker_url:
            try:
                celery.check_broker(self.broker_url)
                components["broker"] = "healthy"
            except RuntimeFailure as exc:
                components["broker"] = "unreachable"
                problems.append(str(exc))
            for worker, state in self.workers.states(spec.name).items():
                # Shown, not judged: the autoscaler and the supervisor look after workers.
                components[worker] = "healthy" if state == "running" else state
        ports = self.ports.get(spec.name)
        report: dict[str, object] = {}
        if ports and states.get("api-server") == "running":
            try:
                resp = self._http.get(
                    f"http://127.0.0.1:{ports.api}/api/v2/monitor/health", timeout=3.0
                )
                report = resp.json() if resp.status_code == 200 else {}
                if not report:
                    problems.append(f"api-server answered HTTP {resp.status_code}")
            except (httpx.HTTPError, ValueError):
                components["api-server"] = "starting"
                problems.append("api-server is not answering yet")
        for key, name in HEALTH_KEYS.items():
            entry = report.get(key)
            status = entry.get("status") if isinstance(entry, dict) else None
            if status == "healthy":
                components.setdefault(name, "healthy")
                continue
            if components.get(name, "healthy") == "healthy":
                components[name] = str(status or "unknown")
                if report:
                    problems.append(f"{name} is {status or 'not reporting'}")
        healthy = not problems and bool(report)
        env = self._envs.get(spec.name)
        if env and env.mirror:
            # Reported, but Airflow itself keeps running on the DAGs it has.
            components["dag-sync"] = "failing" if env.mirror.last_error else "healthy"
            if env.mirror.last_error:
                problems.append(f"DAG sync failing: {env.mirror.last_error}")
        return Health(healthy, "; ".join(dict.fromkeys(problems)), components)

    def worker_load(self, spec: EnvironmentSpec) -> WorkerLoad | None:
        if not self.broker_url or not self._running(spec.name):
            return None
        conn = database.pg_airflow_url(
            self._admin_url, spec.name, self._secrets(spec.name).db_password
        )
        try:
            queued, running = celery.task_counts(conn)
        except Exception as exc:  # psycopg's errors: the DB is down or not migrated yet
            raise RuntimeFailure("DATABASE_FAILED", f"counting task instances: {exc}") from exc
        workers, busy = self.workers.counts(spec.name)
        return WorkerLoad(queued, running, workers, busy)

    def worker_bundle(self, spec: EnvironmentSpec) -> WorkerBundle | None:
        if not self.broker_url or not self._running(spec.name):
            return None
        return self._env(spec.name).bundle

    def set_workers(self, spec: EnvironmentSpec, count: int) -> None:
        env = self._env(spec.name)
        if not env.lock.acquire(blocking=False):
            return  # being updated or deleted: the next pass sees the result
        try:
            if self._running(spec.name):
                self.workers.scale(spec.name, count)
        finally:
            env.lock.release()

    @property
    def _admin_url(self) -> str:
        assert self.airflow_database_url is not None
        return self.airflow_database_url

    def webserver_url(self, spec: EnvironmentSpec) -> str | None:
        ports = self.ports.get(spec.name)
        return f"http://127.0.0.1:{ports.api}" if ports else None

    def destroy(self, spec: EnvironmentSpec, progress: Progress) -> None:
        env = self._env(spec.name)
        with env.lock:
            progress("stopping Airflow components")
            self._stop_mirror(spec.name)
            self.workers.configure(spec.name, None)
            self.supervisor.stop(spec.name)
            env_dir = self._dir(spec.name)
            self._kill_orphans(env_dir)
            self._purge_broker(spec)
            if self.airflow_database_url:
                progress("dropping the metadata database")
                try:
                    database.pg_drop(self.airflow_database_url, spec.name)
                except Exception as exc:
                    raise RuntimeFailure(
                        "DATABASE_FAILED", f"dropping the database: {exc}"
                    ) from exc
            shutil.rmtree(env_dir, ignore_errors=True)
            self.ports.release(spec.name)
            env.fingerprint = None
            env.tokens.clear()
        with self._envs_lock:
            self._envs.pop(spec.name, None)

    def _purge_broker(self, spec: EnvironmentSpec) -> None:
        install = self._load_state(spec.name).get("install")
        if not self.broker_url or not isinstance(install, str):
            return
        try:
            removed = celery.purge_redis_keys(
                Path(install) / "bin" / "python", self.broker_url, f"{_queue(spec)}:"
            )
        except (RuntimeFailure, OSError, subprocess.SubprocessError, ValueError) as exc:
            # Left-over keys harm no one (the queue name is never reused): say so and go on.
            log.warning("%s: broker keys left in place: %s", spec.name, exc)
            return
        log.info("%s: removed %d broker keys", spec.name, removed)

    def shutdown(self) -> None:
        with self._envs_lock:
            envs = list(self._envs)
        for name in envs:
            self._stop_mirror(name)
        self.supervisor.stop_all()

    # -- for the gateway and the CLI ---------------------------------------------------------

    def airflow_api(
        self, spec: EnvironmentSpec, role: str = "Admin", *, fresh: bool = False
    ) -> tuple[str, str]:
        """(API server base URL, bearer token of the environment's user for MWAA ``role``).

        Tokens come from ``POST /auth/token`` and are cached until 5 minutes before expiry
        (``fresh``: not taken from the cache).
        """
        user = ROLES.get(role.capitalize())
        if user is None:
            raise RuntimeFailure(
                "ACCESS_DENIED", f"role {role} has no Airflow permissions (use {', '.join(ROLES)})"
            )
        env = self._env(spec.name)
        base = self.webserver_url(spec)
        if base is None:
            raise RuntimeFailure("NOT_RUNNING", f"environment {spec.name} is not started")
        with env.lock:
            cached = env.tokens.get(user)
            if cached and cached[1] - time.time() > 300 and not fresh:
                return base, cached[0]
            try:
                resp = self._http.post(
                    f"{base}/auth/token",
                    json={"username": user, "password": self._secrets(spec.name).passwords[user]},
                    timeout=10.0,
                )
            except httpx.HTTPError as exc:
                raise RuntimeFailure("AIRFLOW_API_FAILED", f"POST /auth/token: {exc}") from exc
            if resp.status_code not in (200, 201):
                raise RuntimeFailure(
                    "AIRFLOW_API_FAILED", f"POST /auth/token answered HTTP {resp.status_code}"
                )
            token = str(resp.json()["access_token"])
            env.tokens[user] = (token, _jwt_expiry(token))
            return base, token

    def airflow_env(self, spec: EnvironmentSpec) -> tuple[Path, dict[str, str]]:
        """(``airflow`` binary, environment) to run Airflow CLI commands for ``spec``.

        The scheduler's own environment when running (startup-script exports included).
        """
        scheduler = self.supervisor.components(spec.name).get("scheduler")
        if scheduler is not None:
            return Path(scheduler.spec.argv[0]), dict(scheduler.spec.env)
        prepared = self._prepare(spec, lambda _line: None)
        return prepared.install / "bin" / "airflow", self._component_env(prepared)

    # -- preparation -------------------------------------------------------------------------

    def _env(self, name: str) -> _Env:
        with self._envs_lock:
            return self._envs.setdefault(name, _Env())

    def _dir(self, name: str) -> Path:
        return self.data_dir / "environments" / name

    def _home(self, name: str) -> Path:
        return self._dir(name) / "airflow"

    def _fetch(
        self, spec: EnvironmentSpec, path: str | None, version: str | None, what: str
    ) -> bytes | None:
        if not path:
            return None
        try:
            return self.store.get_object(spec.source_bucket, path.lstrip("/"), version)
        except ObjectNotFound as exc:
            raise RuntimeFailure("S3_OBJECT_NOT_FOUND", f"{what}: {exc}") from exc
        except BucketError as exc:
            raise RuntimeFailure("S3_ACCESS_FAILED", f"{what}: {exc}") from exc

    def _secrets(self, name: str) -> Secrets:
        path = self._dir(name) / "secrets.json"
        try:
            return Secrets(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            pass
        value = Secrets(
            jwt_secret=secrets.token_urlsafe(48),
            api_secret_key=secrets.token_urlsafe(48),
            fernet_key=base64.urlsafe_b64encode(os.urandom(32)).decode(),
            db_password=secrets.token_urlsafe(24),
            passwords={user: secrets.token_urlsafe(24) for user in ROLES.values()},
        )
        write_atomic(path, json.dumps(value.__dict__).encode(), mode=0o600)
        return value

    def _component_names(self, spec: EnvironmentSpec) -> list[str]:
        """The environment's components: several schedulers only on PostgreSQL with Celery
        (SQLite allows one writer)."""
        schedulers = max(1, spec.schedulers) if self.broker_url else 1
        extra = [f"scheduler-{n}" for n in range(2, schedulers + 1)]
        return ["scheduler", *extra, *COMPONENTS[1:]]

    def _prepare(self, spec: EnvironmentSpec, progress: Progress) -> _Prepared:
        """Fetch artifacts and build the install; touches nothing a running environment uses."""
        if self.broker_url:
            celery.check_broker(self.broker_url)
        if spec.airflow_version not in SUPPORTED_VERSIONS:
            raise RuntimeFailure(
                "UNSUPPORTED_AIRFLOW_VERSION",
                f"Airflow {spec.airflow_version} is not supported "
                f"(supported: {', '.join(SUPPORTED_VERSIONS)})",
            )
        env_dir = self._dir(spec.name)
        for sub in ("airflow/dags", "airflow/plugins", "airflow/logs", "logs", "run"):
            (env_dir / sub).mkdir(parents=True, exist_ok=True)
        secrets_ = self._secrets(spec.name)
        ports = self.ports.allocate(spec.name)
        reqs_raw = self._fetch(
            spec, spec.requirements_s3_path, spec.requirements_s3_object_version, "requirements.txt"
        )
        requirements = reqs_raw.decode("utf-8", "replace") if reqs_raw is not None else None
        plugins = self._fetch(
            spec, spec.plugins_s3_path, spec.plugins_s3_object_version, "plugins.zip"
        )
        startup = self._fetch(
            spec,
            spec.startup_script_s3_path,
            spec.startup_script_s3_object_version,
            "startup script",
        )
        install = ensure_install(self.data_dir, spec.airflow_version, requirements, progress)
        if self.airflow_database_url:
            conn = database.pg_airflow_url(
                self.airflow_database_url, spec.name, secrets_.db_password
            )
        else:
            conn = database.sqlite_url(self._home(spec.name) / "airflow.db")
        return _Prepared(spec, install, requirements, plugins, startup, secrets_, ports, conn)

    def _load_state(self, name: str) -> dict[str, object]:
        try:
            return dict(json.loads((self._dir(name) / "state.json").read_text()))
        except (OSError, ValueError):
            return {}

    def _save_state(self, name: str, **changes: object) -> None:
        state = self._load_state(name)
        state.update(changes)
        write_atomic(self._dir(name) / "state.json", json.dumps(state, indent=1).encode())

    def _materialize(self, prepared: _Prepared, progress: Progress) -> None:
        """Write plugins, startup script, passwords and metadata DB (components stopped)."""
        spec = prepared.spec
        home = self._home(spec.name)
        state = self._load_state(spec.name)
        if state.get("plugins") != prepared.plugins_hash:
            self._unpack_plugins(home / "plugins", prepared.plugins)
        script = self._dir(spec.name) / "startup.sh"
        if prepared.startup is None:
            script.unlink(missing_ok=True)
        else:
            write_atomic(script, prepared.startup, mode=0o700)
        passwords = home / "simple_auth_manager_passwords.json"
        write_atomic(passwords, json.dumps(prepared.secrets.passwords).encode(), 0o600)
        self._ensure_database(prepared, state, progress)
        self._save_state(
            spec.name,
            install=str(prepared.install),
            plugins=prepared.plugins_hash,
            startup=prepared.startup_hash,
            spec=_spec_dict(spec),
        )
        mirror = self._mirror_for(spec)
        try:
            mirror.sync_once()  # DAGs are in place before the components start
        except (BucketError, OSError) as exc:
            raise RuntimeFailure(
                "S3_ACCESS_FAILED", f"reading s3://{spec.source_bucket}/{spec.dag_s3_path}: {exc}"
            ) from exc

    def _unpack_plugins(self, target: Path, data: bytes | None) -> None:
        tmp = target.with_name(".plugins.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if data is not None:
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    for member in archive.infolist():
                        dest = (tmp / member.filename).resolve()
                        if tmp.resolve() not in dest.parents and dest != tmp.resolve():
                            raise RuntimeFailure(
                                "INCORRECT_PLUGINS", f"plugins.zip: unsafe path {member.filename}"
                            )
                    archive.extractall(tmp)
            except zipfile.BadZipFile as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise RuntimeFailure("INCORRECT_PLUGINS", f"plugins.zip: {exc}") from exc
        old = target.with_name(".plugins.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)

    def _ensure_database(
        self, prepared: _Prepared, state: Mapping[str, object], progress: Progress
    ) -> None:
        spec = prepared.spec
        version = spec.airflow_version
        if self.airflow_database_url:
            progress("creating the PostgreSQL metadata database")
            database.pg_create(self.airflow_database_url, spec.name, prepared.secrets.db_password)
        else:
            db = self._home(spec.name) / "airflow.db"
            if not db.exists():
                database.copy_template(prepared.install, db)
                self._save_state(spec.name, migrated=version)
                return
        migrated = state.get("migrated")
        if migrated == version:
            return
        if isinstance(migrated, str) and self._snapshot_or_restore(spec, migrated, progress):
            return
        progress(f"migrating the metadata database to Airflow {version}")
        env = self._component_env(prepared)
        proc = subprocess.run(
            [str(prepared.install / "bin" / "airflow"), "db", "migrate"],
            env=env,
            cwd=self._home(spec.name),
            capture_output=True,
            text=True,
            check=False,
        )
        with open(self._dir(spec.name) / "logs" / "db-migrate.log", "a") as fh:
            fh.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeFailure(
                "DATABASE_MIGRATION_FAILED",
                f"airflow db migrate failed: {useful_error_line(proc.stderr or proc.stdout)}",
            )
        self._save_state(spec.name, migrated=version)

    def _snapshot_or_restore(
        self, spec: EnvironmentSpec, migrated: str, progress: Progress
    ) -> bool:
        """Around a version change of an existing SQLite DB: True when restored.

        An upgrade first copies the DB as ``airflow.db.<old version>``, so a
        rollback (UpdateEnvironment back to the old version after a failure)
        restores the DB that version used instead of running it on a schema it
        does not know. Downgrades without such a copy are refused.
        """
        target = spec.airflow_version
        if _version(target) > _version(migrated):
            if not self.airflow_database_url:
                db = self._home(spec.name) / "airflow.db"
                progress(f"saving the Airflow {migrated} metadata database")
                database.copy_sqlite(db, db.with_name(f"airflow.db.{migrated}"))
            return False
        snapshot = self._home(spec.name) / f"airflow.db.{target}"
        if self.airflow_database_url or not snapshot.exists():
            raise RuntimeFailure(
                "DATABASE_MIGRATION_FAILED",
                f"the metadata database is at Airflow {migrated}; "
                f"going back to {target} is not supported",
            )
        progress(f"restoring the Airflow {target} metadata database")
        database.copy_sqlite(snapshot, self._home(spec.name) / "airflow.db")
        self._save_state(spec.name, migrated=target)
        return True

    # -- processes -------------------------------------------------------------------------

    def _component_env(self, prepared: _Prepared) -> dict[str, str]:
        spec = prepared.spec
        env = inherited_env()
        env["PATH"] = f"{prepared.install / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(
            airflow_environment(
                airflow_home=self._home(spec.name),
                install=prepared.install,
                sql_alchemy_conn=prepared.sql_alchemy_conn,
                ports=prepared.ports,
                secrets=prepared.secrets,
                parallelism=max(1, spec.tasks_per_worker * spec.max_workers),
                tasks_per_worker=spec.tasks_per_worker,
                options=spec.airflow_configuration_options,
                public_url=spec.endpoint_url,
            )
        )
        if self.broker_url:
            env.update(
                celery.celery_environment(
                    broker_url=self.broker_url,
                    result_backend="db+" + prepared.sql_alchemy_conn,
                    queue=_queue(spec),
                    tasks_per_worker=spec.tasks_per_worker,
                )
            )
            env["AIRFLOW__CORE__PARALLELISM"] = str(spec.tasks_per_worker * MAX_WORKERS_CAP)
        env.update(
            {
                MARKER: str(self._dir(spec.name)),
                "AIRFLOW_VERSION": spec.airflow_version,
                "AIRFLOW_ENV_NAME": spec.name,
                "AIRFLOW_ENV_CLASS": spec.environment_class,
            }
        )
        return env

    def _fingerprint(self, prepared: _Prepared) -> str:
        payload = {
            "install": str(prepared.install),
            "env": self._component_env(prepared),
            "components": self._component_names(prepared.spec),
            "plugins": prepared.plugins_hash,
            "startup": prepared.startup_hash,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _specs(
        self, prepared: _Prepared, exports: Mapping[str, Mapping[str, str]], fingerprint: str
    ) -> list[ComponentSpec]:
        name = prepared.spec.name
        base_env = self._component_env(prepared)
        airflow = str(prepared.install / "bin" / "airflow")
        specs = []
        for component in self._component_names(prepared.spec):
            command = component.split("-")[0] if component.startswith("scheduler") else component
            env = {**base_env, **exports.get(MWAA_COMPONENT[command], {})}
            specs.append(
                ComponentSpec(
                    name=component,
                    argv=[airflow, command],
                    env=env,
                    cwd=self._home(name),
                    log_path=self._dir(name) / "logs" / f"{component}.log",
                    fingerprint=fingerprint,
                )
            )
        return specs

    def _running(self, name: str) -> bool:
        """All components up or restarting (workers come and go, so they don't count)."""
        states = self.supervisor.states(name)
        base = [s for c, s in states.items() if celery.worker_index(c) is None]
        return bool(base) and all(s in ("running", "restarting") for s in base)

    def _configure_workers(
        self, prepared: _Prepared, exports: Mapping[str, Mapping[str, str]], fingerprint: str
    ) -> None:
        if not self.broker_url:
            return
        spec = prepared.spec
        home = self._home(spec.name)
        base_env = self._component_env(prepared)
        self._env(spec.name).bundle = WorkerBundle(
            airflow_version=spec.airflow_version,
            requirements=prepared.requirements,
            env=portable_env(base_env),
            queue=_queue(spec),
            concurrency=spec.tasks_per_worker,
            startup_script=prepared.startup,
            fingerprint=fingerprint,
            folders={"dags": home / "dags", "plugins": home / "plugins"},
        )
        self.workers.configure(
            spec.name,
            WorkerTemplate(
                airflow=str(prepared.install / "bin" / "airflow"),
                env={**base_env, **exports.get("worker", {})},
                cwd=self._home(spec.name),
                log_dir=self._dir(spec.name) / "logs",
                run_dir=self._dir(spec.name) / "run",
                queue=_queue(spec),
                concurrency=spec.tasks_per_worker,
                hostname=spec.name,
                fingerprint=fingerprint,
                log_port=lambda worker, replace_busy: self.ports.named_port(
                    spec.name, worker, replace_busy=replace_busy
                ),
            ),
        )

    def _adopt(self, prepared: _Prepared) -> bool:
        """Take over components a killed control plane left running, if they match."""
        name = prepared.spec.name
        run_dir = self._dir(name) / "run"
        fingerprint = self._fingerprint(prepared)
        found = {
            c: read_pidfile(run_dir / f"{c}.json") for c in self._component_names(prepared.spec)
        }
        if all(f is not None and f[1] == fingerprint for f in found.values()):
            try:
                exports = json.loads((self._dir(name) / "startup-exports.json").read_text())
            except (OSError, ValueError):
                exports = {}
            for spec in self._specs(prepared, exports, fingerprint):
                entry = found[spec.name]
                assert entry is not None
                self.supervisor.adopt(name, spec, run_dir, entry[0])
            self._configure_workers(prepared, exports, fingerprint)
            for pidfile in run_dir.glob(f"{celery.WORKER_PREFIX}*.json"):
                worker = read_pidfile(pidfile)
                if worker is not None and worker[1] == fingerprint:
                    self.supervisor.adopt(
                        name,
                        self.workers.spec(name, pidfile.stem, running=True),
                        run_dir,
                        worker[0],
                    )
                elif worker is not None:
                    terminate([worker[0]])
            self._env(name).fingerprint = fingerprint
            log.info("adopted the running components of %s", name)
            return True
        self._kill_orphans(self._dir(name))
        return False

    def _kill_orphans(self, env_dir: Path) -> None:
        run_dir = env_dir / "run"
        sessions = recorded_sessions(run_dir)
        procs = []
        for pidfile in run_dir.glob("*.json") if run_dir.is_dir() else []:
            found = read_pidfile(pidfile)
            if found:
                procs.append(found[0])
        procs += [
            p for p in marked_processes(env_dir, sessions) if p.pid not in {q.pid for q in procs}
        ]
        for pidfile in run_dir.glob("*.json") if run_dir.is_dir() else []:
            pidfile.unlink(missing_ok=True)
        if procs:
            log.warning("stopping %d leftover processes of %s", len(procs), env_dir.name)
            terminate(procs)

    def _launch(self, prepared: _Prepared, progress: Progress) -> None:
        spec = prepared.spec
        name = spec.name
        env_dir = self._dir(name)
        self._kill_orphans(env_dir)
        busy = [p for p in prepared.ports.__dict__.values() if not port_is_free(p)]
        if busy:
            log.warning("ports %s of %s are taken; allocating others", busy, name)
            prepared.ports = self.ports.allocate(name, replace_busy=True)
        exports = self._run_startup_script(prepared, progress)
        # Kept for a successor control plane, which adopts without re-running the script.
        write_atomic(env_dir / "startup-exports.json", json.dumps(exports).encode(), 0o600)
        fingerprint = self._fingerprint(prepared)
        progress("starting Airflow components")
        self.supervisor.launch(
            name,
            self._specs(prepared, exports, fingerprint),
            env_dir / "run",
            restart_on_exit=False,
        )
        env = self._env(name)
        env.fingerprint = fingerprint
        env.tokens.clear()
        try:
            self._wait_started(spec, progress)
        except BaseException:
            self.supervisor.stop(name, grace=ABORT_GRACE)
            self._kill_orphans(env_dir)
            raise
        self.supervisor.set_restart_on_exit(name, True)
        self._configure_workers(prepared, exports, fingerprint)
        if self.broker_url:
            progress(f"starting {spec.min_workers} Celery workers")
            self.workers.scale(name, spec.min_workers)

    def _run_startup_script(
        self, prepared: _Prepared, progress: Progress
    ) -> dict[str, dict[str, str]]:
        if prepared.startup is None:
            return {}
        progress("running the startup script")
        name = prepared.spec.name
        script = self._dir(name) / "startup.sh"
        base = self._component_env(prepared)
        protected = set(base) - {"PATH"}
        kinds = sorted({"scheduler", "webserver", *(["worker"] if self.broker_url else [])})

        def run(kind: str) -> dict[str, str]:
            return run_startup_script(
                script,
                {**base, "MWAA_AIRFLOW_COMPONENT": kind},
                cwd=self._dir(name),
                log_path=self._dir(name) / "logs" / f"startup-{kind}.log",
                protected=protected | {"MWAA_AIRFLOW_COMPONENT"},
            )

        with ThreadPoolExecutor(len(kinds)) as pool:
            results = dict(zip(kinds, pool.map(run, kinds), strict=True))
        return results

    def _wait_started(self, spec: EnvironmentSpec, progress: Progress) -> None:
        progress("waiting for Airflow to report healthy")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for cname, comp in self.supervisor.components(spec.name).items():
                # An exit during start fails the start, even when the supervisor has
                # already restarted the component by the time this loop looks.
                if comp.exit_codes or not comp.alive():
                    code = comp.exit_codes[0] if comp.exit_codes else comp.returncode()
                    runs = tail(comp.spec.log_path).split("--- openmwaa: starting")
                    restarted = comp.alive() and len(runs) > 2
                    text = runs[-2] if restarted else runs[-1]
                    raise RuntimeFailure(
                        "COMPONENT_FAILED",
                        f"{cname} exited at start (code {code}): {useful_error_line(text)}",
                    )
            if self.health(spec).healthy:
                return
            time.sleep(0.5)
        log.warning(
            "%s not healthy after %.0fs; leaving it to health checks", spec.name, START_TIMEOUT
        )

    # -- DAG mirror --------------------------------------------------------------------------

    def _mirror_for(self, spec: EnvironmentSpec) -> DagMirror:
        env = self._env(spec.name)
        mirror = env.mirror
        if mirror is None or (mirror.bucket, mirror.prefix.rstrip("/")) != (
            spec.source_bucket,
            spec.dag_s3_path.strip("/"),
        ):
            if mirror is not None:
                mirror.stop()
            mirror = DagMirror(
                self.store,
                spec.source_bucket,
                spec.dag_s3_path,
                self._home(spec.name) / "dags",
                self._dir(spec.name) / "dags-manifest.json",
            )
            env.mirror = mirror
        return mirror

    def _start_mirror(self, spec: EnvironmentSpec) -> None:
        self._mirror_for(spec).start()

    def _stop_mirror(self, name: str) -> None:
        env = self._envs.get(name)
        if env and env.mirror:
            env.mirror.stop()
            env.mirror = None


def _queue(spec: EnvironmentSpec) -> str:
    """The environment's broker queue (specs from before queues were named: by name)."""
    return spec.celery_queue or f"openmwaa-{spec.name}"


def _spec_dict(spec: EnvironmentSpec) -> dict[str, object]:
    data = dict(spec.__dict__)
    data["airflow_configuration_options"] = dict(spec.airflow_configuration_options)
    data["logging"] = {k: dict(v) for k, v in spec.logging.items()}
    return data


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _jwt_expiry(token: str) -> float:
    with contextlib.suppress(Exception):
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    return time.time() + 600
