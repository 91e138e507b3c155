"""The ASGI app of one environment's endpoint: routes MWAA's paths, proxies the rest."""

from __future__ import annotations

import logging
import time

import httpx
from anyio import to_thread

from openmwaa.api import console_sso
from openmwaa.api.asgi import Receive, Scope, Send
from openmwaa.api.gateway.cli import CliRunner
from openmwaa.api.gateway.common import Domain, Reply, html_reply, json_reply, send_whole
from openmwaa.api.gateway.login import web_login
from openmwaa.api.gateway.proxy import Proxy
from openmwaa.service.airflow3 import AirflowDialect

log = logging.getLogger(__name__)

SSO_PATH = "/aws_mwaa/aws-console-sso"
CLI_PATH = "/aws_mwaa/cli"
UPSTREAM_CACHE_SECONDS = 2.0


class GatewayApp:
    """The ASGI app of one environment's endpoint."""

    def __init__(self, name: str, port: int, domain: Domain, client: httpx.AsyncClient) -> None:
        self.name = name
        self.cookie = f"_token_{port}"
        self._domain = domain
        self._proxy = Proxy(name, self.cookie, client)
        self.cli = CliRunner(domain, name)
        self._upstream: tuple[float, tuple[str, AirflowDialect] | None] = (0.0, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] != "http":  # websockets: the Airflow 3 UI uses none
            await send({"type": "websocket.close", "code": 1003})
            return
        try:
            await self._route(scope, receive, send)
        except Reply as r:
            headers = [("content-type", r.content_type), ("cache-control", "no-store"), *r.headers]
            await send_whole(send, r.status, headers, r.body)
        except Exception:
            log.exception("endpoint of %s: %s %s failed", self.name, scope["method"], scope["path"])
            await send_whole(
                send,
                500,
                [("content-type", "application/json")],
                b'{"message": "The endpoint failed to process the request."}',
            )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == SSO_PATH:
            if method == "GET":
                raise html_reply(200, console_sso.login_page(self.name, SSO_PATH))
            if method == "POST":
                await web_login(self._domain, self.name, self.cookie, scope, receive, redirect=True)
            raise json_reply(405, {"message": "Use GET or POST."})
        if path == CLI_PATH and method == "POST":
            await self.cli.handle(scope, receive)
        upstream = await self._upstream_of()
        dialect = upstream[1] if upstream else None
        if dialect and path in dialect.login_paths and method == "POST":
            await web_login(self._domain, self.name, self.cookie, scope, receive, redirect=False)
        if dialect and method == "GET" and path in dialect.ui_login_paths:
            raise html_reply(401, console_sso.session_ended_page(self.name))
        if dialect and any(path == p or path.startswith(p + "/") for p in dialect.blocked_prefixes):
            raise json_reply(404, {"detail": "Not Found"})
        if upstream is None:
            raise html_reply(
                503,
                console_sso.error_page(
                    "Airflow is not running",
                    f"The web server of {self.name} is not running right now; "
                    "check the environment's status with aws mwaa get-environment.",
                    self.name,
                ),
            )
        await self._proxy.forward(scope, receive, send, upstream[0], upstream[1])

    async def _upstream_of(self) -> tuple[str, AirflowDialect] | None:
        at, value = self._upstream
        now = time.monotonic()
        if value is None or now - at > UPSTREAM_CACHE_SECONDS:
            value = await to_thread.run_sync(self._domain.airflow_base, self.name)
            self._upstream = (now, value)
        return value
