"""LocalBackend: the Backend interface over the modules of this package.

Each lifecycle step (provision, start, apply, destroy) holds its environment's
lifecycle lock; nothing quick (tokens, health, worker scaling) waits on it.
Shutdown makes steps in flight give up (``Interrupted``) at their next check and
kills running uv installs, so the control plane stops within ``SHUTDOWN_TIMEOUT``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from openmwaa.buckets import BucketStore, open_store
from openmwaa.runtime import celery, database, installs
from openmwaa.runtime.base import (
    AirflowCli,
    EnvironmentSpec,
    Health,
    Interrupted,
    Progress,
    RuntimeFailure,
    WorkerBundle,
    WorkerLoad,
)
from openmwaa.runtime.brokers import accounts_for
from openmwaa.runtime.config import Secrets
from openmwaa.runtime.installs import SUPPORTED_VERSIONS
from openmwaa.runtime.local import access, health, lifecycle
from openmwaa.runtime.local.components import ensure_broker_account, fingerprint
from openmwaa.runtime.local.context import Context, ExecutionRoles
from openmwaa.runtime.local.layout import Layout
from openmwaa.runtime.local.mirror import ensure_mirror, stop_mirror
from openmwaa.runtime.local.prepare import materialize, prepare
from openmwaa.runtime.local.state import load_secrets, save_state, spec_dict
from openmwaa.runtime.ports import PortRegistry
from openmwaa.runtime.supervisor import Supervisor
from openmwaa.runtime.tenancy import placement
from openmwaa.runtime.tenancy.registry import Tenancy
from openmwaa.runtime.workers import WorkerPool

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 30.0
"""shutdown() returns within this, steps in flight included."""
STEP_GIVE_UP = 15.0
"""How long shutdown() waits for steps in flight to give up before stopping everything."""


class LocalBackend:
    """Runs each environment's Airflow components as supervised local processes."""

    def __init__(
        self,
        data_dir: Path,
        *,
        bucket_store: str = "local",
        airflow_database_url: str | None = None,
        broker_url: str | None = None,
        rabbitmq_management_url: str | None = None,
        store: BucketStore | None = None,
        isolate: bool = True,
        roles: ExecutionRoles | None = None,
    ) -> None:
        """``isolate``: give each environment a user of its own when running as root
        (off only for tools that must run environments as the server's user). ``roles``:
        the execution roles environments act with (None: the server has no AWS credentials)."""
        if broker_url and not airflow_database_url:
            raise ValueError("Celery workers need a PostgreSQL metadata database URL too")
        data_dir = Path(data_dir)
        supervisor = Supervisor()
        self.ctx = Context(
            data_dir=data_dir,
            store=store or open_store(bucket_store, data_dir),
            airflow_database_url=airflow_database_url,
            broker_url=broker_url,
            brokers=accounts_for(broker_url, rabbitmq_management_url),
            ports=PortRegistry(data_dir),
            # One client for health checks and tokens: a client per call builds a TLS
            # context each time (15-20 ms of CPU), and loopback needs no proxy.
            http=httpx.Client(trust_env=False),
            supervisor=supervisor,
            workers=WorkerPool(supervisor),
            tenancy=Tenancy(data_dir, isolate=isolate),
            roles=roles,
        )
        if self.ctx.tenancy is not None and self.ctx.tenancy.isolated:
            try:
                self.ctx.environments = placement.expose(data_dir)["environments"]
            except (placement.PlacementError, OSError) as exc:
                raise RuntimeFailure(
                    "CONFIGURATION", f"environments' folders cannot be made reachable: {exc}"
                ) from exc

    # Shared parts, for tests and tools.
    @property
    def data_dir(self) -> Path:
        return self.ctx.data_dir

    @property
    def supervisor(self) -> Supervisor:
        return self.ctx.supervisor

    @property
    def workers(self) -> WorkerPool:
        return self.ctx.workers

    @property
    def ports(self) -> PortRegistry:
        return self.ctx.ports

    @property
    def store(self) -> BucketStore:
        return self.ctx.store

    @property
    def broker_url(self) -> str | None:
        return self.ctx.broker_url

    @property
    def airflow_database_url(self) -> str | None:
        return self.ctx.airflow_database_url

    def layout(self, name: str) -> Layout:
        """Where the environment's files live."""
        return self.ctx.layout(name)

    def secrets(self, name: str) -> Secrets:
        """The environment's secrets (created on first use)."""
        return load_secrets(self.ctx.layout(name))

    # -- the Backend protocol ----------------------------------------------------------------

    def supported_versions(self) -> list[str]:
        return list(SUPPORTED_VERSIONS)

    def provision(self, spec: EnvironmentSpec, progress: Progress) -> None:
        say = self._guarded(progress)
        with self._step(spec.name):
            prepared = prepare(self.ctx, spec, say)
            ensure_broker_account(self.ctx, spec)
            materialize(self.ctx, prepared, say)

    def start(self, spec: EnvironmentSpec, progress: Progress) -> None:
        say = self._guarded(progress)
        with self._step(spec.name):
            if lifecycle.running(self.ctx, spec.name):
                ensure_mirror(self.ctx, spec)
                return
            prepared = prepare(self.ctx, spec, say)
            ensure_broker_account(self.ctx, spec)
            materialize(self.ctx, prepared, say)
            if not lifecycle.adopt(self.ctx, prepared):
                lifecycle.launch(self.ctx, prepared, say)
            ensure_mirror(self.ctx, spec)

    def apply(self, old: EnvironmentSpec, new: EnvironmentSpec, progress: Progress) -> None:
        say = self._guarded(progress)
        env = self.ctx.env(new.name)
        with self._step(new.name):
            if (old.source_bucket, old.dag_s3_path) != (new.source_bucket, new.dag_s3_path):
                say("re-pointing the DAG mirror")
                stop_mirror(self.ctx, new.name)
            ensure_mirror(self.ctx, new)  # also after a restart of the control plane
            prepared = prepare(self.ctx, new, say)  # new install built while the old one runs
            running = lifecycle.running(self.ctx, new.name)
            if running and env.fingerprint == fingerprint(self.ctx, prepared):
                save_state(self.ctx.layout(new.name), spec=spec_dict(new))
                return
            if running:
                say("stopping Airflow components")
                self.ctx.supervisor.stop(new.name)
            ensure_broker_account(self.ctx, new)
            materialize(self.ctx, prepared, say)
            lifecycle.launch(self.ctx, prepared, say)
            ensure_mirror(self.ctx, new)

    def health(self, spec: EnvironmentSpec) -> Health:
        return health.check(self.ctx, spec)

    def worker_load(self, spec: EnvironmentSpec) -> WorkerLoad | None:
        if not self.ctx.broker_url or not lifecycle.running(self.ctx, spec.name):
            return None
        conn = database.pg_airflow_url(
            self.ctx.admin_url, spec.name, self.secrets(spec.name).db_password
        )
        try:
            queued, running = celery.task_counts(conn)
        except Exception as exc:  # psycopg's errors: the DB is down or not migrated yet
            raise RuntimeFailure("DATABASE_FAILED", f"counting task instances: {exc}") from exc
        workers, busy = self.ctx.workers.counts(spec.name)
        return WorkerLoad(queued, running, workers, busy)

    def worker_bundle(self, spec: EnvironmentSpec) -> WorkerBundle | None:
        if not self.ctx.broker_url or not lifecycle.running(self.ctx, spec.name):
            return None
        return self.ctx.env(spec.name).bundle

    def set_workers(self, spec: EnvironmentSpec, count: int) -> None:
        env = self.ctx.env(spec.name)
        if not env.lock.acquire(blocking=False):
            return  # being updated or deleted: the next pass sees the result
        try:
            if lifecycle.running(self.ctx, spec.name):
                self.ctx.workers.scale(spec.name, count)
        finally:
            env.lock.release()

    def webserver_url(self, spec: EnvironmentSpec) -> str | None:
        return access.webserver_url(self.ctx, spec)

    def airflow_api(
        self, spec: EnvironmentSpec, role: str = "Admin", *, fresh: bool = False
    ) -> tuple[str, str]:
        return access.airflow_api(self.ctx, spec, role, fresh=fresh)

    def airflow_cli(self, spec: EnvironmentSpec) -> AirflowCli:
        return access.airflow_cli(self.ctx, spec)

    def isolation_problems(self) -> list[str]:
        return self.ctx.tenancy.problems() if self.ctx.tenancy else ["isolation is turned off"]

    def destroy(self, spec: EnvironmentSpec, progress: Progress) -> None:
        say = self._guarded(progress)
        env = self.ctx.env(spec.name)
        with self._step(spec.name):
            say("stopping Airflow components")
            stop_mirror(self.ctx, spec.name)
            self.ctx.workers.configure(spec.name, None)
            self.ctx.supervisor.stop(spec.name)
            layout = self.ctx.layout(spec.name)
            lifecycle.kill_orphans(layout.root)
            if self.ctx.tenancy is not None:
                self.ctx.tenancy.remove(spec.name)  # its user, cgroups and anything left
            lifecycle.purge_broker(self.ctx, spec)
            if self.ctx.airflow_database_url:
                say("dropping the metadata database")
                try:
                    database.pg_drop(self.ctx.airflow_database_url, spec.name)
                except Exception as exc:
                    raise RuntimeFailure(
                        "DATABASE_FAILED", f"dropping the database: {exc}"
                    ) from exc
            shutil.rmtree(layout.root, ignore_errors=True)
            self.ctx.ports.release(spec.name)
            env.fingerprint = None
            env.forget_tokens()
        self.ctx.forget_env(spec.name)

    def shutdown(self) -> None:
        """Stop everything this backend runs, within SHUTDOWN_TIMEOUT.

        Steps in flight give up (Interrupted, so the reconciler resumes them at the next
        start): the stopping flag is checked between steps, running uv installs are killed.
        """
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        self.ctx.stopping.set()
        # Kill running uv installs and startup scripts (their steps raise Interrupted).
        installs.cancel_all()
        try:
            give_up = time.monotonic() + STEP_GIVE_UP
            for name in self.ctx.env_names():
                lock = self.ctx.env(name).lock
                if lock.acquire(timeout=max(0.0, give_up - time.monotonic())):
                    lock.release()
                else:
                    log.warning("%s: a step did not give up in time; stopping it anyway", name)
            for name in self.ctx.env_names():
                stop_mirror(self.ctx, name)
            grace = max(1.0, min(10.0, (deadline - time.monotonic()) / 2))
            self.ctx.supervisor.stop_all(grace=grace)
        finally:
            # The cancellation is process-wide; this backend refuses new steps by itself,
            # and another backend of the same process (tests) may install again.
            installs.resume()

    # -- helpers -------------------------------------------------------------------------------

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        """Hold the environment's lifecycle lock for one step; refused once the control
        plane is stopping, and a failure while it stops (a killed install or script) is
        Interrupted: the step is resumed at the next start, not failed."""
        self.ctx.check_stopping()
        with self.ctx.env(name).lock:
            try:
                yield
            except RuntimeFailure as exc:
                if self.ctx.stopping.is_set():
                    raise Interrupted(f"the control plane stopped during the step: {exc}") from exc
                raise

    def _guarded(self, progress: Progress) -> Progress:
        """Each progress line is a point where a stopping control plane interrupts the
        step; writing it is best effort (a full disk or a locked store must not fail it)."""

        def say(line: str) -> None:
            self.ctx.check_stopping()
            try:
                progress(line)
            except Interrupted:
                raise
            except Exception:
                log.warning("progress line not recorded: %s", line, exc_info=True)

        return say
