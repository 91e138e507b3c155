"""An in-process environment gateway over a real store, real sockets and a real upstream.

The domain behind the gateway is a small stand-in (``FakeDomain``) so that these tests
need no Airflow: they are about the gateway itself (its limits, its streaming, its
listeners), not about tokens, which the live tests of this folder cover.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn

from openmwaa.api.gateway import GatewayManager
from openmwaa.runtime.base import AirflowCli
from openmwaa.service.airflow3 import AIRFLOW_3, AirflowDialect
from openmwaa.service.endpoint_addresses import EndpointAddresses
from openmwaa.service.errors import AccessDeniedException
from openmwaa.service.tokens import Session
from openmwaa.store.db import Store
from openmwaa.store.models import EnvironmentRow

VERSION_ONLY = {
    "airflow_version": "3.3.2",
    "prefix_chars": "-",
    "commands": {
        "version": {"options": [], "positionals": [], "allow_abbrev": True},
    },
}
"""An Airflow CLI definition with one command, enough for ``version``."""


class FakeDomain:
    """What the gateway asks of the domain, answered without Airflow; counts token use."""

    def __init__(self, upstream: str | None = None, cli_seconds: float = 0.0) -> None:
        self.upstream = upstream
        self.cli_seconds = cli_seconds
        self.redeemed: list[str] = []

    def airflow_base(self, name: str) -> tuple[str, AirflowDialect] | None:
        return (self.upstream, AIRFLOW_3) if self.upstream else None

    def web_session(self, name: str, token: str) -> Session:
        if token in self.redeemed:
            raise AccessDeniedException("The token is invalid, expired or already used.")
        self.redeemed.append(token)
        return Session(name, "Admin", "the-jwt", AIRFLOW_3)

    def cli(self, name: str, token: str) -> AirflowCli:
        self.redeemed.append(token)
        script = f"import time; time.sleep({self.cli_seconds}); print('3.3.2')"
        return AirflowCli((sys.executable, "-c", script), {}, None, VERSION_ONLY)


def environment_row(name: str, status: str = "CREATING") -> EnvironmentRow:
    return EnvironmentRow(
        name=name,
        arn=f"arn:aws:airflow:us-east-1:123456789012:environment/{name}",
        status=status,
        created_at=datetime.now(UTC),
        spec={"WebserverAccessMode": "PRIVATE_ONLY"},
        applied=None,
        tags={},
        generation=1,
    )


def new_store(path: Path) -> Store:
    store = Store(f"sqlite:///{path / 'store.db'}")
    store.migrate()
    return store


def remove(store: Store, name: str) -> None:
    store.update_environment(name, status="DELETING")
    store.delete_environment(name)


def free_port_range(size: int) -> int:
    """The first port of ``size`` consecutive ports that are free now (best effort)."""
    for first in range(42000, 60000, size):
        if all(_free(p) for p in (first, first + size // 2, first + size - 1)):
            return first
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@asynccontextmanager
async def gateway(
    tmp: Path, domain: FakeDomain, *, ports: int = 50
) -> AsyncIterator[tuple[GatewayManager, Store, EndpointAddresses]]:
    store = new_store(tmp)
    first = free_port_range(ports)
    addresses = EndpointAddresses(tmp, "127.0.0.1", first_port=first, last_port=first + ports - 1)
    manager = GatewayManager(store, domain, addresses, interval=3600)
    try:
        yield manager, store, addresses
    finally:
        await manager.stop()
        store.close()


class Upstream:
    """A stand-in Airflow API server: reads each request body as it arrives and answers
    with its size and digest; ``first_bytes`` is set once a body's first bytes arrived."""

    def __init__(self) -> None:
        self.first_bytes = asyncio.Event()
        self.port = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        size, digest = 0, hashlib.sha256()
        while True:
            message = await receive()
            body = message.get("body", b"")
            if body:
                self.first_bytes.set()
            size += len(body)
            digest.update(body)
            if not message.get("more_body"):
                break
        answer = json.dumps({"bytes": size, "sha256": digest.hexdigest()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(self, log_level="warning", lifespan="off", access_log=False)
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{self.port}"
        finally:
            server.should_exit = True
            await task
