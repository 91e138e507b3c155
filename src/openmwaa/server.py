"""Assembles the control plane (store, backend, domain, reconciler, API) and serves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from openmwaa.api.airflow_http import AirflowHttp
from openmwaa.api.app import MwaaApi
from openmwaa.api.credentials import CredentialRoutes
from openmwaa.api.gateway import GatewayManager
from openmwaa.api.provider import MwaaProvider
from openmwaa.api.serving import uvicorn_config
from openmwaa.api.workers import WorkerRoutes
from openmwaa.instance import InstanceLock
from openmwaa.runtime import exposure
from openmwaa.runtime.base import Backend
from openmwaa.runtime.config import refused_config_keys
from openmwaa.runtime.roles import ExecutionRoles, execution_roles
from openmwaa.service.autoscaler import Autoscaler
from openmwaa.service.endpoint import Endpoint
from openmwaa.service.endpoint_addresses import EndpointAddresses
from openmwaa.service.environments import Environments
from openmwaa.service.identity import Identities
from openmwaa.service.reconciler import Reconciler
from openmwaa.service.worker_hosts import WorkerHosts
from openmwaa.settings import PRIVATE_UMASK, Settings, secure_data_dir
from openmwaa.store.db import Store, secure_file

log = logging.getLogger(__name__)

ADMIN_KEY_FILE = "admin-key.json"
SERVER_FILE = "server.json"
SHUTDOWN_DEADLINE = 25.0
"""Seconds from the stop signal after which the process exits whatever is still stopping
(within the 30 s a service manager gives; what runs on is adopted at the next start)."""
DEADLINE_EXIT_CODE = 4
"""Exit status when the deadline cut the stop short (3: another server holds the data dir)."""


@dataclass
class ControlPlane:
    settings: Settings
    store: Store
    backend: Backend
    identities: Identities
    environments: Environments
    reconciler: Reconciler
    autoscaler: Autoscaler
    app: MwaaApi
    endpoint: Endpoint
    addresses: EndpointAddresses


def open_store(settings: Settings) -> Store:
    secure_data_dir(settings.data_dir)
    store = Store(settings.store_url)
    store.migrate()
    return store


def build(settings: Settings) -> ControlPlane:
    store = open_store(settings)
    roles = _execution_roles(settings)
    backend = _make_backend(settings, roles)
    identities = Identities(store, settings.account_id)
    environments = Environments(
        store,
        region=settings.region,
        account_id=settings.account_id,
        supported_versions=backend.supported_versions(),
        refused_config_keys=refused_config_keys,
    )
    hosts = WorkerHosts(backend, environments)
    autoscaler = Autoscaler(
        store, backend, environments, hosts, cooldown=settings.scale_in_cooldown
    )
    reconciler = Reconciler(
        store,
        backend,
        environments,
        interval=settings.reconcile_interval,
        scaling_status=autoscaler.status,
    )
    environments.set_wake(reconciler.wake)
    addresses = EndpointAddresses(settings.data_dir, settings.host, settings.public_host)
    environments.set_endpoint_url(addresses.url)
    endpoint = Endpoint(store, environments, backend, addresses, AirflowHttp())
    app = MwaaApi(
        MwaaProvider(environments, endpoint),
        identities,
        settings.region,
        WorkerRoutes(hosts),
        CredentialRoutes(environments, roles) if roles is not None else None,
    )
    return ControlPlane(
        settings,
        store,
        backend,
        identities,
        environments,
        reconciler,
        autoscaler,
        app,
        endpoint,
        addresses,
    )


def _execution_roles(settings: Settings) -> ExecutionRoles | None:
    """Environments act with their ExecutionRoleArn when the server has AWS credentials of
    its own (local backend); None otherwise."""
    if settings.backend != "local":
        return None
    return execution_roles(settings.data_dir, settings.host, settings.port, settings.region)


def _make_backend(settings: Settings, roles: ExecutionRoles | None = None) -> Backend:
    if settings.backend == "test":
        from openmwaa.runtime.testing import ProcessBackend

        return ProcessBackend(settings.data_dir)
    from openmwaa.runtime import make_backend

    return make_backend(settings, roles)


def admin_key_path(data_dir: Path) -> Path:
    return data_dir / ADMIN_KEY_FILE


def write_server_file(settings: Settings) -> None:
    """What ``openmwaa credentials`` needs to know about the running server."""
    path = settings.data_dir / SERVER_FILE
    path.write_text(json.dumps({"endpoint_url": settings.endpoint_url, "region": settings.region}))
    secure_file(path)


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: a flood of connections to the API or the
    endpoints must not leave the health checks without file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # macOS: an infinite hard limit, at most OPEN_MAX soft
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 10240), hard))


class ShutdownDeadline:
    """The last resort of a stop: exits the process ``seconds`` after :meth:`start`.

    Each stop step bounds itself (installs are cancelled, steps interrupted); this is for
    the one that does not. Components left running are adopted at the next start.
    """

    def __init__(self, seconds: float = SHUTDOWN_DEADLINE) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.seconds, self._expire)
                self._timer.daemon = True
                self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _expire(self) -> None:
        log.error(
            "stopping took more than %.0f s: exiting now; what still runs is adopted "
            "at the next start",
            self.seconds,
        )
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(DEADLINE_EXIT_CODE)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its own shutdown, which would kill the
    process before the environments are stopped; here they only ask it to exit, and
    start the shutdown deadline."""

    deadline: ShutdownDeadline | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        yield

    def handle_exit(self, sig: int, frame: object) -> None:
        if self.deadline is not None:
            self.deadline.start()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; raises AlreadyRunning when another server holds the data
    dir or the store (checked before anything is read, started or adopted)."""
    os.umask(PRIVATE_UMASK)
    secure_data_dir(settings.data_dir)
    lock = InstanceLock(
        settings.data_dir,
        settings.database_url,
        on_lost=lambda: os.kill(os.getpid(), signal.SIGTERM),  # a clean stop, as by hand
    )
    lock.acquire()
    try:
        _serve_locked(settings)
    finally:
        lock.release()


def _serve_locked(settings: Settings) -> None:
    raise_open_files_limit()
    # The API's event loop shares the GIL with reconciler threads; the default 5 ms
    # switch interval would add up to that much to a request that waits behind them.
    sys.setswitchinterval(0.0005)
    plane = build(settings)
    # Admin accounts anyone on this host can use would undo the environments' separation.
    local = settings.backend == "local"
    findings = exposure.check(settings.airflow_database_url, settings.broker_url) if local else []
    # Without root (or cgroups) environments share the server's user (or have no limits).
    findings += plane.backend.isolation_problems()
    for finding in findings:
        log.warning("%s", finding)
    exposure.save(settings.data_dir, findings)
    plane.identities.ensure_admin_key(admin_key_path(settings.data_dir))
    write_server_file(settings)
    plane.reconciler.start()
    plane.autoscaler.start()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = uvicorn_config(plane.app, host=settings.host, port=settings.port)
    log.info("openmwaa serving the MWAA API on %s", settings.endpoint_url)
    gateways = GatewayManager(plane.store, plane.endpoint, plane.addresses)
    api_server = _Server(config)
    deadline = ShutdownDeadline()
    api_server.deadline = deadline

    async def main() -> None:
        await gateways.start()
        try:
            await api_server.serve()
        finally:
            await gateways.stop()

    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(main())
    finally:
        deadline.start()  # also when the API stopped for another reason (port taken)
        log.info("stopping: environments are stopped cleanly and resumed at the next start")
        plane.autoscaler.stop()
        plane.reconciler.stop()
        plane.backend.shutdown()
        plane.store.close()
        deadline.cancel()
