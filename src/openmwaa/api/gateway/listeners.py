"""One listener per environment endpoint, started and stopped as environments come and go.

Listeners of deleted environments close concurrently in the background: a pass never
waits for them, so a new environment's endpoint opens at once even after hundreds of
deletions. A port that another process holds is never left as an environment's
endpoint: the environment gets another port (and so another WebserverUrl).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import uvicorn
from anyio import to_thread

from openmwaa.api.gateway.app import GatewayApp
from openmwaa.api.gateway.common import Domain
from openmwaa.api.gateway.proxy import new_client
from openmwaa.api.serving import uvicorn_config
from openmwaa.service.endpoint_addresses import EndpointAddresses
from openmwaa.store.db import Store
from openmwaa.store.status import ENDPOINT_LISTENS

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 15.0


class _ListenerServer(uvicorn.Server):
    """The control plane owns the signals; a listener only stops when told to."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class _Listener:
    hosts: tuple[str, ...]
    port: int
    server: _ListenerServer
    task: asyncio.Task[None]
    app: GatewayApp
    sockets: list[socket.socket] = field(default_factory=list)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_all(hosts: tuple[str, ...], port: int) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for host in hosts:
            sockets.append(_bind(host, port))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _close(listener: _Listener) -> None:
    listener.server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(listener.task, CLOSE_TIMEOUT)
    for sock in listener.sockets:
        sock.close()


class GatewayManager:
    """Starts and stops the endpoint listeners as environments come and go.

    Runs on the control plane's event loop; a pass every ``interval`` seconds
    reads the environments from the store, so restarts of the control plane
    serve every environment again at its persisted port.
    """

    def __init__(
        self,
        store: Store,
        domain: Domain,
        addresses: EndpointAddresses,
        *,
        interval: float = 1.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._store = store
        self._domain = domain
        self._addresses = addresses
        self._interval = interval
        self._listeners: dict[str, _Listener] = {}
        self._failed: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing: dict[asyncio.Task[None], int] = {}
        """Listeners being closed in the background -> their port (still bound)."""
        self._client = client or new_client()

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.create_task(self._loop(), name="gateway-manager")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sync()
            except Exception:
                log.exception("endpoint listeners: pass failed")

    async def sync(self) -> None:
        """One pass: listen for every served environment, close the others (in the
        background, all at once)."""
        wanted = await to_thread.run_sync(self._wanted)
        for name in [n for n in self._listeners if n not in wanted]:
            self._retire(name)
        for name, (hosts, port) in wanted.items():
            current = self._listeners.get(name)
            same = current is not None and (current.hosts, current.port) == (hosts, port)
            if same and current is not None and not current.task.done():
                continue
            if current is not None:  # moved or crashed: its port must be free again first
                del self._listeners[name]
                await _close(current)
            await self._start(name, hosts, port)

    def _wanted(self) -> dict[str, tuple[tuple[str, ...], int]]:
        wanted: dict[str, tuple[tuple[str, ...], int]] = {}
        present = set()
        # Ports allocated before the environments are read: one allocated meanwhile (a new
        # environment) is not taken for a deleted one's.
        known = self._addresses.known()
        for row in self._store.environments():
            present.add(row.name)
            if row.status not in ENDPOINT_LISTENS:
                continue
            mode = (row.applied or row.spec)["WebserverAccessMode"]
            hosts = tuple(self._addresses.bind_hosts(mode))
            wanted[row.name] = (hosts, self._addresses.port(row.name))
        for name in known:
            if name not in present:
                self._addresses.release(name)
        return wanted

    def _retire(self, name: str) -> None:
        listener = self._listeners.pop(name)
        task = asyncio.create_task(_close(listener), name=f"endpoint-close-{name}")
        self._closing[task] = listener.port
        task.add_done_callback(self._closing.pop)

    async def _start(self, name: str, hosts: tuple[str, ...], port: int) -> None:
        try:
            sockets = _bind_all(hosts, port)
        except OSError as e:
            if e.errno == errno.EADDRINUSE and port not in self._closing.values():
                port = await to_thread.run_sync(self._move, name, port)
                try:
                    sockets = _bind_all(hosts, port)
                except OSError as again:
                    self._bind_failed(name, port, again)
                    return
            else:
                self._bind_failed(name, port, e)
                return
        self._failed.pop(name, None)
        app = GatewayApp(name, port, self._domain, self._client)
        # The server's listener settings: header, body-idle and connection limits too.
        config = uvicorn_config(
            app, date_header=False, timeout_graceful_shutdown=5, timeout_keep_alive=30
        )
        server = _ListenerServer(config)
        task = asyncio.create_task(server.serve(sockets=sockets), name=f"endpoint-{name}")
        self._listeners[name] = _Listener(hosts, port, server, task, app, sockets)
        log.info("environment %s: endpoint on %s", name, ", ".join(f"{h}:{port}" for h in hosts))

    def _move(self, name: str, taken: int) -> int:
        """Another process holds the environment's port: give it a free one (a new
        WebserverUrl), never report one that answers for someone else."""
        port = self._addresses.reassign(name)
        log.warning(
            "environment %s: endpoint port %d is held by another process; moved to port %d",
            name,
            taken,
            port,
        )
        return port

    def _bind_failed(self, name: str, port: int, e: OSError) -> None:
        reason = f"{e.strerror or e}"
        if self._failed.get(name) != reason:
            log.error("endpoint of %s cannot listen on port %d: %s", name, port, reason)
            self._failed[name] = reason

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for name in list(self._listeners):
            self._retire(name)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self._client.aclose()

    def listening(self) -> dict[str, int]:
        return {n: listener.port for n, listener in self._listeners.items()}

    def closing(self) -> int:
        """Listeners still being closed in the background."""
        return len(self._closing)
