"""The environment endpoint: one listener per environment, in the control plane.

Each environment is served at ``http://HOST:PORT`` (its WebServerHostname):

- ``GET /aws_mwaa/aws-console-sso`` the web login page; ``POST`` redeems the
  token and redirects into the UI with the role user's session cookie;
- ``POST /pluginsv2/aws_mwaa/login`` and ``/aws_mwaa/login`` (MwaaHook's
  fallback): form field ``token``, answered with the session cookie;
- ``POST /aws_mwaa/cli``: runs an allowed Airflow CLI command
  (``Authorization: Bearer <CliToken>``), answers base64 stdout/stderr;
- everything else is streamed to the environment's Airflow API server (UI,
  ``/api/v2``, static files), which stays on loopback.

Browsers keep cookies per host, not per port, so the session cookie is kept
under a per-endpoint name (``_token_<port>``) in the browser and renamed to
Airflow's on the way in and out; other endpoints' cookies are never forwarded.
Tokens, cookies and passwords are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from anyio import to_thread

from openmwaa.api import console_sso
from openmwaa.api.asgi import HOP_BY_HOP, BodyTooLarge, Receive, Scope, Send, read_body
from openmwaa.runtime.base import RuntimeFailure
from openmwaa.service.airflow3 import AirflowDialect
from openmwaa.service.cli_commands import CommandRefused, parse_command
from openmwaa.service.endpoint import Endpoint
from openmwaa.service.endpoint_addresses import EndpointAddresses
from openmwaa.service.errors import ServiceError
from openmwaa.store.db import Store

log = logging.getLogger(__name__)


SSO_PATH = "/aws_mwaa/aws-console-sso"
CLI_PATH = "/aws_mwaa/cli"
MAX_FORM = 64 * 1024
MAX_PROXY_BODY = 32 * 1024 * 1024
CLI_TIMEOUT = 120.0
MAX_CLI_OUTPUT = 8 * 1024 * 1024
UPSTREAM_CACHE_SECONDS = 2.0
_SET_BY_PROXY = frozenset(
    {b"content-length", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded"}
)
SERVED_STATUSES = frozenset({"AVAILABLE", "UPDATING", "UPDATE_FAILED", "UNAVAILABLE", "CREATING"})
"""Environments whose endpoint listens (CREATING ones answer "starting" until Airflow runs)."""


class _Reply(Exception):
    """A complete answer decided early (errors, refusals)."""

    def __init__(
        self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]] | None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


def _json(status: int, payload: dict[str, Any]) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), "application/json", None)


def _html(status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> _Reply:
    return _Reply(status, body, "text/html; charset=utf-8", headers)


async def _read_body(receive: Receive, limit: int) -> bytes:
    try:
        return await read_body(receive, limit)
    except BodyTooLarge:
        raise _json(413, {"message": f"The request body is larger than {limit} bytes."}) from None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class GatewayApp:
    """The ASGI app of one environment's endpoint."""

    def __init__(self, name: str, port: int, endpoint: Endpoint, client: httpx.AsyncClient) -> None:
        self.name = name
        self.cookie = f"_token_{port}"
        self._endpoint = endpoint
        self._client = client
        self._upstream: tuple[float, tuple[str, AirflowDialect] | None] = (0.0, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] != "http":  # websockets: the Airflow 3 UI uses none
            await send({"type": "websocket.close", "code": 1003})
            return
        try:
            await self._route(scope, receive, send)
        except _Reply as r:
            headers = [("content-type", r.content_type), ("cache-control", "no-store"), *r.headers]
            await _send_whole(send, r.status, headers, r.body)
        except Exception:
            log.exception("endpoint of %s: %s %s failed", self.name, scope["method"], scope["path"])
            await _send_whole(
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
                raise _html(200, console_sso.login_page(self.name, SSO_PATH))
            if method == "POST":
                await self._web_login(scope, receive, redirect=True)
            raise _json(405, {"message": "Use GET or POST."})
        if path == CLI_PATH and method == "POST":
            await self._cli(scope, receive)
        upstream = await self._upstream_of()
        dialect = upstream[1] if upstream else None
        if dialect and path in dialect.login_paths and method == "POST":
            await self._web_login(scope, receive, redirect=False)
        if dialect and method == "GET" and path in dialect.ui_login_paths:
            raise _html(401, console_sso.session_ended_page(self.name))
        if dialect and any(path == p or path.startswith(p + "/") for p in dialect.blocked_prefixes):
            raise _json(404, {"detail": "Not Found"})
        if upstream is None:
            raise _html(
                503,
                console_sso.error_page(
                    "Airflow is not running",
                    f"The web server of {self.name} is not running right now; "
                    "check the environment's status with aws mwaa get-environment.",
                    self.name,
                ),
            )
        await self._proxy(scope, receive, send, upstream[0], upstream[1])

    async def _upstream_of(self) -> tuple[str, AirflowDialect] | None:
        at, value = self._upstream
        now = time.monotonic()
        if value is None or now - at > UPSTREAM_CACHE_SECONDS:
            value = await to_thread.run_sync(self._endpoint.airflow_base, self.name)
            self._upstream = (now, value)
        return value

    # -- web login ---------------------------------------------------------------------------

    async def _web_login(self, scope: Scope, receive: Receive, *, redirect: bool) -> None:
        body = await _read_body(receive, MAX_FORM)
        form = urllib.parse.parse_qs(body.decode("latin-1"), max_num_fields=10)
        token = (form.get("token") or [""])[0].strip()
        try:
            if not token:
                raise _html(
                    400,
                    console_sso.error_page(
                        "No login token", "The request carries no login token.", self.name
                    ),
                )
            session = await to_thread.run_sync(self._endpoint.web_session, self.name, token)
        except (ServiceError, RuntimeFailure) as e:
            status = getattr(e, "status", 503)
            message = e.message if isinstance(e, ServiceError) else str(e)
            log.info("endpoint of %s: web login refused (%s)", self.name, type(e).__name__)
            raise _html(
                403 if status == 403 else 400 if status < 500 else 503,
                console_sso.error_page("Sign-in failed", message, self.name),
            ) from None
        secure = _header(scope, b"x-forwarded-proto") == "https"
        cookies = [
            (
                "set-cookie",
                session.dialect.cookie_header(session.jwt, secure=secure).replace(
                    session.dialect.session_cookie + "=", self.cookie + "=", 1
                ),
            )
        ]
        log.info("endpoint of %s: web login as %s", self.name, session.role)
        if redirect:
            raise _Reply(
                303, b"", "text/plain", [*cookies, ("location", session.dialect.landing_path)]
            )
        # MwaaHook reads the JWT from the cookie Airflow itself would set.
        cookies.append(("set-cookie", session.dialect.cookie_header(session.jwt, secure=secure)))
        raise _html(200, console_sso.logged_in_page(self.name), cookies)

    # -- CLI ------------------------------------------------------------------------------

    async def _cli(self, scope: Scope, receive: Receive) -> None:
        auth = _header(scope, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _json(401, {"message": "Authorization: Bearer <CliToken> is required."})
        body = await _read_body(receive, MAX_FORM)
        try:
            binary, env, cwd = await to_thread.run_sync(
                self._endpoint.cli_runner, self.name, token.strip()
            )
        except ServiceError as e:
            raise _json(e.status, {"message": e.message}) from None
        except RuntimeFailure as e:
            raise _json(503, {"message": str(e)}) from None
        try:
            args = parse_command(body.decode("utf-8", errors="replace"))
        except CommandRefused as e:
            raise _json(400, {"message": str(e), **_cli_output(b"", str(e).encode())}) from None
        log.info("endpoint of %s: CLI airflow %s", self.name, " ".join(args[:2]))
        stdout, stderr = await _run_cli([str(binary), *args], env, cwd)
        raise _json(200, _cli_output(stdout, stderr))

    # -- the reverse proxy ------------------------------------------------------------------

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, base: str, dialect: AirflowDialect
    ) -> None:
        method = scope["method"]
        body = await _read_body(receive, MAX_PROXY_BODY)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = base + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers: list[tuple[bytes, bytes]] = []
        for key, value in scope["headers"]:
            lower = key.lower()
            if lower in HOP_BY_HOP or lower in _SET_BY_PROXY:
                continue
            if lower == b"cookie":
                value = self._inbound_cookies(value, dialect)
                if not value:
                    continue
            headers.append((lower, value))
        host = _header(scope, b"host") or ""
        client = scope.get("client") or ("", 0)
        # A TLS terminator in front may say https; the client address and host are ours to say.
        proto = (_header(scope, b"x-forwarded-proto") or "http").encode("latin-1")
        headers += [
            (b"x-forwarded-for", str(client[0]).encode()),
            (b"x-forwarded-host", host.encode("latin-1")),
            (b"x-forwarded-proto", proto),
        ]
        request = self._client.build_request(
            method, url, headers=headers, content=body if body else None
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError:
            raise _html(
                502,
                console_sso.error_page(
                    "Airflow is not answering",
                    f"The web server of {self.name} did not answer; it may be restarting.",
                    self.name,
                ),
            ) from None
        try:
            out: list[tuple[bytes, bytes]] = []
            for key, value in response.headers.raw:
                lower = key.lower()
                if lower in HOP_BY_HOP:
                    continue
                if lower == b"set-cookie":
                    value = self._outbound_cookie(value, dialect)
                elif lower == b"location" and value.startswith(base.encode()):
                    value = value[len(base) :] or b"/"
                out.append((lower, value))
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": out}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    def _inbound_cookies(self, header: bytes, dialect: AirflowDialect) -> bytes:
        """Only this endpoint's session cookie goes upstream, under Airflow's name."""
        kept = []
        own = self.cookie.encode()
        plain = dialect.session_cookie.encode()
        for part in header.split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == own:
                kept.append(plain + b"=" + value)
            elif name == plain or name.startswith(plain + b"_"):
                continue
            elif name:
                kept.append(part.strip())
        return b"; ".join(kept)

    def _outbound_cookie(self, value: bytes, dialect: AirflowDialect) -> bytes:
        plain = dialect.session_cookie.encode() + b"="
        if value.startswith(plain):
            return self.cookie.encode() + b"=" + value[len(plain) :]
        return value


def _cli_output(stdout: bytes, stderr: bytes) -> dict[str, str]:
    return {
        "stdout": base64.b64encode(stdout).decode(),
        "stderr": base64.b64encode(stderr).decode(),
    }


async def _run_cli(argv: list[str], env: dict[str, str], cwd: Any) -> tuple[bytes, bytes]:
    """Run the command directly (no shell) in its own session; killed after CLI_TIMEOUT."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return b"", f"The command did not finish in {CLI_TIMEOUT:.0f} s and was stopped.".encode()
    return stdout[-MAX_CLI_OUTPUT:], stderr[-MAX_CLI_OUTPUT:]


async def _send_whole(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers]
            + [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- listeners ------------------------------------------------------------------------------


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


class GatewayManager:
    """Starts and stops the endpoint listeners as environments come and go.

    Runs on the control plane's event loop; a pass every ``interval`` seconds
    reads the environments from the store, so restarts of the control plane
    serve every environment again at its persisted port.
    """

    def __init__(
        self,
        store: Store,
        endpoint: Endpoint,
        addresses: EndpointAddresses,
        *,
        interval: float = 1.0,
    ) -> None:
        self._store = store
        self._endpoint = endpoint
        self._addresses = addresses
        self._interval = interval
        self._listeners: dict[str, _Listener] = {}
        self._failed: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )
        # Requests go upstream with the client's headers only (no gzip the client didn't ask for).
        for default in ("accept", "accept-encoding", "user-agent"):
            del self._client.headers[default]

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
        """One pass: listen for every served environment, stop the others."""
        wanted = await to_thread.run_sync(self._wanted)
        for name in [n for n in self._listeners if n not in wanted]:
            await self._stop(name)
        for name, (hosts, port) in wanted.items():
            current = self._listeners.get(name)
            same = current is not None and (current.hosts, current.port) == (hosts, port)
            if same and current is not None and not current.task.done():
                continue
            if current is not None:
                await self._stop(name)
            await self._start(name, hosts, port)

    def _wanted(self) -> dict[str, tuple[tuple[str, ...], int]]:
        wanted: dict[str, tuple[tuple[str, ...], int]] = {}
        present = set()
        # Ports allocated before the environments are read: one allocated meanwhile (a new
        # environment) is not taken for a deleted one's.
        known = self._addresses.known()
        for row in self._store.environments():
            present.add(row.name)
            if row.status not in SERVED_STATUSES:
                continue
            mode = (row.applied or row.spec)["WebserverAccessMode"]
            hosts = tuple(self._addresses.bind_hosts(mode))
            wanted[row.name] = (hosts, self._addresses.port(row.name))
        for name in known:
            if name not in present:
                self._addresses.release(name)
        return wanted

    async def _start(self, name: str, hosts: tuple[str, ...], port: int) -> None:
        try:
            sockets = [_bind(host, port) for host in hosts]
        except OSError as e:
            reason = f"{e.strerror or e}"
            if self._failed.get(name) != reason:
                log.error("endpoint of %s cannot listen on port %d: %s", name, port, reason)
                self._failed[name] = reason
            return
        self._failed.pop(name, None)
        app = GatewayApp(name, port, self._endpoint, self._client)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=30,
        )
        server = _ListenerServer(config)
        task = asyncio.create_task(server.serve(sockets=sockets), name=f"endpoint-{name}")
        self._listeners[name] = _Listener(hosts, port, server, task, sockets)
        log.info("environment %s: endpoint on %s", name, ", ".join(f"{h}:{port}" for h in hosts))

    async def _stop(self, name: str) -> None:
        listener = self._listeners.pop(name, None)
        if listener is None:
            return
        listener.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(listener.task, 15)
        for sock in listener.sockets:
            sock.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for name in list(self._listeners):
            await self._stop(name)
        await self._client.aclose()

    def listening(self) -> dict[str, int]:
        return {n: listener.port for n, listener in self._listeners.items()}
