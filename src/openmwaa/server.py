"""Assembles the control plane (store, backend, domain, reconciler, API) and serves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from openmwaa.api.app import MwaaApi
from openmwaa.api.gateway import GatewayManager
from openmwaa.api.provider import MwaaProvider
from openmwaa.api.workers import WorkerRoutes
from openmwaa.runtime.base import Backend
from openmwaa.runtime.config import refused_config_keys
from openmwaa.service.autoscaler import Autoscaler
from openmwaa.service.endpoint import Endpoint
from openmwaa.service.endpoint_addresses import EndpointAddresses
from openmwaa.service.environments import Environments
from openmwaa.service.identity import Identities
from openmwaa.service.reconciler import Reconciler
from openmwaa.service.worker_hosts import WorkerHosts
from openmwaa.settings import Settings
from openmwaa.store.db import Store, secure_file

log = logging.getLogger(__name__)

ADMIN_KEY_FILE = "admin-key.json"
SERVER_FILE = "server.json"


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
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = Store(settings.store_url)
    store.migrate()
    return store


def build(settings: Settings) -> ControlPlane:
    store = open_store(settings)
    backend = _make_backend(settings)
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
    endpoint = Endpoint(store, environments, backend, addresses)
    app = MwaaApi(
        MwaaProvider(environments, endpoint), identities, settings.region, WorkerRoutes(hosts)
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


def _make_backend(settings: Settings) -> Backend:
    if settings.backend == "test":
        from openmwaa.runtime.testing import ProcessBackend

        return ProcessBackend(settings.data_dir)
    from openmwaa.runtime import make_backend

    return make_backend(settings)


def admin_key_path(data_dir: Path) -> Path:
    return data_dir / ADMIN_KEY_FILE


def write_server_file(settings: Settings) -> None:
    """What ``openmwaa credentials`` needs to know about the running server."""
    path = settings.data_dir / SERVER_FILE
    path.write_text(json.dumps({"endpoint_url": settings.endpoint_url, "region": settings.region}))
    secure_file(path)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its own shutdown, which would kill the
    process before the environments are stopped; here they only ask it to exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        yield


def serve(settings: Settings) -> None:
    # The API's event loop shares the GIL with reconciler threads; the default 5 ms
    # switch interval would add up to that much to a request that waits behind them.
    sys.setswitchinterval(0.0005)
    plane = build(settings)
    plane.identities.ensure_admin_key(admin_key_path(settings.data_dir))
    write_server_file(settings)
    plane.reconciler.start()
    plane.autoscaler.start()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = uvicorn.Config(
        plane.app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    log.info("openmwaa serving the MWAA API on %s", settings.endpoint_url)
    gateways = GatewayManager(plane.store, plane.endpoint, plane.addresses)
    api_server = _Server(config)

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
        log.info("stopping: environments are stopped cleanly and resumed at the next start")
        plane.autoscaler.stop()
        plane.reconciler.stop()
        plane.store.close()
