"""The environment endpoint's domain: CLI and web login tokens, and InvokeRestApi.

Callers reach their Airflow as an Airflow role. As in MWAA, the role is the
highest of Admin, Op, User, Viewer, Public whose role ARN
(``arn:aws:airflow:REGION:ACCOUNT:role/ENV/ROLE``) the caller's policy allows
for the action. Tokens are random, kept only as SHA-256 digests, single-use
and short-lived.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable
from urllib.parse import urlsplit

import httptools
import httpx
from anyio import to_thread

from openmwaa.runtime.base import Backend, EnvironmentSpec, RuntimeFailure
from openmwaa.service.airflow3 import AirflowDialect, dialect_for
from openmwaa.service.documents import RawJson
from openmwaa.service.endpoint_addresses import EndpointAddresses
from openmwaa.service.environments import Environments
from openmwaa.service.errors import (
    AccessDeniedException,
    ResourceNotFoundException,
    RestApiException,
    ValidationException,
)
from openmwaa.service.identity import Caller
from openmwaa.store.db import Store
from openmwaa.store.models import TokenRow

ROLES = ("Admin", "Op", "User", "Viewer", "Public")
TOKEN_LIFETIME = timedelta(seconds=60)
REST_API_TIMEOUT = 10.0
"""MWAA gives InvokeRestApi 10 seconds."""
SERVING_STATUSES = ("AVAILABLE", "UPDATE_FAILED", "UPDATING")
REST_API_STATUSES = (*SERVING_STATUSES, "UNAVAILABLE")
"""InvokeRestApi also tries an UNAVAILABLE environment: a slow health check should not fail
calls Airflow can answer, and a down Airflow gives RestApiServerException 502."""
_BODYLESS = ("GET", "HEAD", "DELETE")
INVALID_TOKEN = "The token is invalid, expired or already used: create a new one."
API_CACHE_SECONDS = 30.0
"""How long InvokeRestApi reuses an environment's (API URL, role JWT) for one generation."""
STATE_CACHE_SECONDS = 1.0
"""How long InvokeRestApi may reuse an environment's status and configuration read from
the store; any environment write of this server drops it at once (``Store``), so only
another server sharing the store's database can be seen up to this late."""
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
"""Paths sent as they are; others (spaces, '%', non-ASCII, '.' segments) are encoded by
httpx, as before."""


@runtime_checkable
class CliBackend(Protocol):
    """A backend that can run the Airflow CLI of an environment (the local one can)."""

    def airflow_env(self, spec: EnvironmentSpec) -> tuple[Path, dict[str, str]]: ...


@dataclass(frozen=True)
class Session:
    """What a redeemed web login token opens: the environment's UI as ``role``."""

    environment: str
    role: str
    jwt: str
    dialect: AirflowDialect


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Endpoint:
    def __init__(
        self,
        store: Store,
        environments: Environments,
        backend: Backend,
        addresses: EndpointAddresses,
    ) -> None:
        self._store = store
        self._envs = environments
        self._backend = backend
        self.addresses = addresses
        self._api_cache: dict[tuple[str, str, int], tuple[float, _Target]] = {}
        self._api_lock = threading.Lock()
        # One connection pool on the server's event loop: InvokeRestApi reuses connections
        # to the API servers and waits for Airflow without holding a worker thread.
        self._http = AirflowHttp()

    def _hostname(self, name: str, row: Any) -> str:
        config = row.applied or row.spec
        return self.addresses.hostname(name, config["WebserverAccessMode"])

    def role_for(self, caller: Caller, name: str, action: str) -> str:
        """The highest Airflow role the caller may act as, or AccessDeniedException."""
        for role in ROLES:
            if caller.allowed(action, self._envs.role_arn(name, role)):
                return role
        try:
            caller.authorize(action, self._envs.role_arn(name, "Admin"))
        except AccessDeniedException as e:
            # MwaaHook looks for "Airflow role" to fall back to a web login session.
            raise AccessDeniedException(
                f"{e.message} (the caller may act as no Airflow role of {name})"
            ) from None
        raise AssertionError("authorize always raises here")  # pragma: no cover

    def _running(self, name: str) -> Any:
        row = self._envs.row(name)
        self._check_serving(row)
        return row

    def _check_serving(self, row: Any, statuses: tuple[str, ...] = SERVING_STATUSES) -> None:
        if row.status not in statuses or row.applied is None:
            raise ValidationException(
                f"Environment {row.name} is {row.status}: its web server is reachable only "
                "while it is AVAILABLE."
            )

    def _mint(self, kind: str, name: str, role: str, caller: Caller) -> str:
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        self._store.purge_tokens(now)
        self._store.add_token(
            TokenRow(
                digest=digest(token),
                kind=kind,
                environment=name,
                airflow_role=role,
                iam_identity=caller.arn,
                expires_at=now + TOKEN_LIFETIME,
                used=0,
            )
        )
        return token

    def cli_token(self, caller: Caller, name: str) -> dict[str, Any]:
        row = self._running(name)
        role = "Admin"
        return {
            "CliToken": self._mint("cli", name, role, caller),
            "WebServerHostname": self._hostname(name, row),
        }

    def web_login_token(self, caller: Caller, name: str) -> dict[str, Any]:
        self._envs.row(name)
        role = self.role_for(caller, name, "CreateWebLoginToken")
        row = self._running(name)
        return {
            "WebToken": self._mint("web", name, role, caller),
            "WebServerHostname": self._hostname(name, row),
            "IamIdentity": caller.arn,
            "AirflowIdentity": f"{caller.user_name}-{role}".lower()[:64],
        }

    def redeem(self, token: str, kind: str, name: str) -> TokenRow:
        """Use a token of ``kind`` minted for environment ``name``: once, within 60 s."""
        row = self._store.redeem_token(digest(token), kind, datetime.now(UTC))
        if row is None or row.environment != name:
            raise AccessDeniedException(INVALID_TOKEN)
        return row

    # -- the gateway ------------------------------------------------------------------------

    def spec(self, name: str) -> EnvironmentSpec:
        """The running configuration of a serving environment (ValidationException if not)."""
        return self._envs.spec_of(name, self._running(name).applied)

    def airflow_base(self, name: str) -> tuple[str, AirflowDialect] | None:
        """(API server base URL, dialect) of the environment, None while it has none."""
        row = self._store.get_environment(name)
        if row is None or row.applied is None:
            return None
        spec = self._envs.spec_of(name, row.applied)
        base = self._backend.webserver_url(spec)
        return (base, dialect_for(spec.airflow_version)) if base else None

    def web_session(self, name: str, token: str) -> Session:
        """Redeem a web login token for the session of its Airflow role.

        AccessDeniedException for a bad token or a role with no Airflow user,
        ValidationException when the environment is not serving.
        """
        row = self.redeem(token, "web", name)
        spec = self.spec(name)
        try:
            _, jwt = self._backend.airflow_api(spec, row.airflow_role)
        except RuntimeFailure as e:
            if e.code == "ACCESS_DENIED":
                raise AccessDeniedException(
                    f"The {row.airflow_role} role has no access to the Airflow UI."
                ) from None
            raise
        return Session(name, row.airflow_role, jwt, dialect_for(spec.airflow_version))

    def cli_runner(self, name: str, token: str) -> tuple[Path, dict[str, str], Path | None]:
        """Redeem a CLI token: (``airflow`` binary, its environment, working folder)."""
        self.redeem(token, "cli", name)
        spec = self.spec(name)
        if not isinstance(self._backend, CliBackend):
            raise RuntimeFailure("NO_AIRFLOW_CLI", "this backend cannot run the Airflow CLI")
        binary, env = self._backend.airflow_env(spec)
        home = env.get("AIRFLOW_HOME")
        return binary, env, Path(home) if home else None

    # -- InvokeRestApi --------------------------------------------------------------------------

    def _cached_target(self, key: tuple[str, str, int]) -> _Target | None:
        with self._api_lock:
            hit = self._api_cache.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def _fetch_target(
        self, key: tuple[str, str, int], applied: dict[str, Any], fresh: bool
    ) -> _Target:
        """Ask the backend for the role's (base URL, JWT) and cache it; may block on Airflow."""
        now = time.monotonic()
        spec = self._envs.spec_of(key[0], applied)
        base, token = self._backend.airflow_api(spec, key[1], fresh=fresh)
        target = _Target.of(base + dialect_for(spec.airflow_version).rest_api_prefix, token)
        with self._api_lock:
            if len(self._api_cache) > 1000:
                self._api_cache.clear()
            self._api_cache[key] = (now + API_CACHE_SECONDS, target)
        return target

    async def _rest_api_target(
        self, key: tuple[str, str, int], applied: dict[str, Any], *, fresh: bool
    ) -> _Target:
        """The REST API base URL and the JWT of the role's user, cached per environment
        generation.

        A cached target costs no thread hop; fetching one (``POST /auth/token`` to the
        environment) runs in a worker thread.
        """
        if not fresh:
            hit = self._cached_target(key)
            if hit is not None:
                return hit
        return await to_thread.run_sync(self._fetch_target, key, applied, fresh)

    async def invoke_rest_api(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        """Call the environment's Airflow REST API as the caller's role, on the event loop.

        The environment's state is one lean store read (reused for up to a second, and
        never across a write of this server); the request to Airflow is awaited, so the
        common path (a cached JWT) never leaves the event loop. RuntimeFailure when the
        backend cannot reach Airflow.
        """
        name = p["Name"]
        row = self._store.environment_state(name, max_age=STATE_CACHE_SECONDS)
        if row is None:
            raise ResourceNotFoundException(f"Environment {name} does not exist.")
        role = self.role_for(caller, name, "InvokeRestApi")
        self._check_serving(row, REST_API_STATUSES)
        assert row.applied is not None
        path = p["Path"] if p["Path"].startswith("/") else "/" + p["Path"]
        if ".." in path.split("/") or "?" in path or "#" in path:
            raise ValidationException(
                f"Path {p['Path']!r} must be an Airflow REST API path such as /dags, "
                "without '..', '?' or '#'; pass query parameters in QueryParameters."
            )
        method = p["Method"]
        body = p.get("Body")
        send_body = body is not None and (method not in _BODYLESS or body != {})
        key = (name, role, row.generation)
        for attempt in (1, 2):
            target = await self._rest_api_target(key, row.applied, fresh=attempt == 2)
            try:
                response = await self._http.request(
                    target,
                    method,
                    path,
                    params=p.get("QueryParameters") or None,
                    json=body if send_body else None,
                )
            except TimeoutError:
                raise RestApiException(504, {"detail": "Airflow did not answer in 10 s"}) from None
            except AirflowConnectError as e:
                if attempt == 1:  # not sent; the API server may have moved: look it up again
                    continue
                raise RestApiException(502, {"detail": f"Airflow is unreachable: {e}"}) from None
            except AirflowHttpError as e:
                raise RestApiException(502, {"detail": f"Airflow is unreachable: {e}"}) from None
            if response.status_code == 401 and attempt == 1:
                continue  # a cached JWT the environment no longer accepts
            break
        if response.status_code < 400 and response.is_json():
            # Airflow's JSON (FastAPI's, always valid) goes on as it came: decoding it only
            # to encode it again would cost time in proportion to its size.
            answer: Any = RawJson(response.content)
        else:
            decoded = response.decoded()
            try:
                answer = decoded.json() if decoded.content else {}
            except ValueError:
                answer = {"detail": decoded.text}
        if response.status_code >= 400:
            raise RestApiException(response.status_code, answer)
        return {"RestApiStatusCode": response.status_code, "RestApiResponse": answer}


# -- the HTTP client of InvokeRestApi ------------------------------------------------------------
#
# InvokeRestApi's latency is compared with calling Airflow directly, and on that path a
# general-purpose client (httpx on httpcore, anyio and h11) costs more CPU per call than
# the rest of the request together. This one does only what the call needs: HTTP/1.1 over
# pooled keep-alive connections on the event loop, responses parsed by httptools (the C
# parser uvicorn uses). httpx still builds every request that is not a plain GET or DELETE
# (query parameters, JSON bodies, paths that need percent-encoding) and decodes every
# answer that is not passed on as it came, so those keep httpx's exact encoding.

USER_AGENT = "openmwaa"
MAX_CONNECTIONS = 200
MAX_IDLE_CONNECTIONS = 50
"""Idle keep-alive connections kept per API server."""
IDLE_SECONDS = 4.0
"""An idle connection is not reused after this long: Airflow's API server (uvicorn) closes
idle connections after 5 s, and a request sent as it does so would fail."""


class AirflowHttpError(Exception):
    """The request to Airflow failed after it may have been sent."""


class AirflowConnectError(AirflowHttpError):
    """No connection to Airflow could be made: the request was not sent."""


@dataclass(frozen=True)
class _Target:
    """Where InvokeRestApi sends a role's calls: a REST API base URL and the role's JWT."""

    url: str
    token: str
    scheme: str
    host: str
    port: int
    prefix: str
    """The base URL's path, e.g. ``/api/v2``."""
    headers: bytes
    """Host, Authorization and the fixed headers, as sent."""

    @classmethod
    def of(cls, url: str, token: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RuntimeFailure("BAD_API_URL", f"cannot call Airflow's API at {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        headers = (
            f"Host: {parts.netloc}\r\nAccept: */*\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Authorization: Bearer {token}\r\n"
        ).encode("latin-1")
        return cls(url, token, parts.scheme, parts.hostname, port, parts.path, headers)


@dataclass(frozen=True)
class AirflowResponse:
    status_code: int
    headers: list[tuple[bytes, bytes]]
    """As received, names lower-cased."""
    content: bytes
    """The body as received (still content-encoded, if the server encoded it)."""

    def header(self, name: bytes) -> str | None:
        values = [v.decode("latin-1") for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def is_json(self) -> bool:
        """Whether the body is a JSON document in UTF-8 (what Airflow's API sends)."""
        if not self.content or self.header(b"content-encoding") not in (None, "identity"):
            return False
        media_type, _, parameters = (self.header(b"content-type") or "").partition(";")
        charset = parameters.partition("charset=")[2].strip().strip('"').lower()
        return media_type.strip().lower() == "application/json" and charset in ("", "utf-8")

    def decoded(self) -> httpx.Response:
        """The answer as httpx reads it (content-encoding, charset), for everything that
        is not passed on as it came."""
        response = httpx.Response(
            self.status_code, headers=self.headers, stream=httpx.ByteStream(self.content)
        )
        response.read()
        return response


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to an API server: one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._done: asyncio.Future[None] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._headers_complete = False
        self._keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done is None or self._done.done():
            return
        if self._headers_complete and self._body_ends_at_close():
            self._done.set_result(None)
        else:
            self._done.set_exception(
                AirflowHttpError("Server disconnected without sending a complete response.")
            )

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():  # bytes nobody asked for
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.close()
            if not self._done.done():
                self._done.set_exception(AirflowHttpError(f"Invalid HTTP response: {e}"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._headers_complete = True
        # Only known here: once the message is complete the parser starts the next one.
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # the client's side

    def _body_ends_at_close(self) -> bool:
        names = {name for name, _ in self._headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes) -> AirflowResponse:
        assert self.transport is not None
        self._done = asyncio.get_running_loop().create_future()
        self._headers, self._body = [], []
        self._headers_complete = self._keep_alive = False
        self.transport.write(request)
        await self._done
        return AirflowResponse(self._parser.get_status_code(), self._headers, b"".join(self._body))

    def reusable(self) -> bool:
        return self._keep_alive and not self.closed


class AirflowHttp:
    """Pooled HTTP/1.1 calls to the environments' API servers, on the event loop.

    Each call has REST_API_TIMEOUT seconds in all (TimeoutError). No cookies, no proxy
    (HTTP_PROXY and the like name the service's outbound proxy, not the way to loopback),
    no Accept-Encoding (compression on loopback would cost, not save).
    """

    def __init__(self, timeout: float = REST_API_TIMEOUT) -> None:
        self._timeout = timeout
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._tls: ssl.SSLContext | None = None

    async def request(
        self,
        target: _Target,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
    ) -> AirflowResponse:
        """``method`` ``path`` (under the target's base URL) as the target's role."""
        message = _encode(target, method, path, params, json)
        async with asyncio.timeout(self._timeout), self._slots:
            connection = await self._connection(target)
            try:
                response = await connection.exchange(message)
            except BaseException:  # failed, timed out or cancelled: never reused
                connection.close()
                raise
        origin = (target.scheme, target.host, target.port)
        if connection.reusable():
            connection.idle_since = time.monotonic()
            idle = self._idle.setdefault(origin, [])
            idle.append(connection)
            if len(idle) > MAX_IDLE_CONNECTIONS:
                idle.pop(0).close()
        else:
            connection.close()
        return response

    async def _connection(self, target: _Target) -> _Connection:
        idle = self._idle.get((target.scheme, target.host, target.port))
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        tls = None
        if target.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            _, connection = await loop.create_connection(
                _Connection, target.host, target.port, ssl=tls
            )
        except OSError as e:
            raise AirflowConnectError(str(e) or type(e).__name__) from None
        return connection


def _encode(target: _Target, method: str, path: str, params: Any, json: Any) -> bytes:
    """The request's bytes: a plain GET or DELETE directly, anything else built by httpx."""
    if (
        params is None
        and json is None
        and method in ("GET", "DELETE")
        and _PLAIN_PATH.fullmatch(path)
        and "." not in path.split("/")
    ):
        return f"{method} {target.prefix}{path} HTTP/1.1\r\n".encode() + target.headers + b"\r\n"
    request = httpx.Request(method, target.url + path, params=params, json=json)
    head = [f"{method} {request.url.raw_path.decode('ascii')} HTTP/1.1\r\n".encode()]
    head.append(target.headers)
    for name, value in request.headers.raw:
        if name.lower() != b"host":
            head.append(name + b": " + value + b"\r\n")
    return b"".join([*head, b"\r\n", request.content])
