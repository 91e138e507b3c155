"""The HTTP client of InvokeRestApi: HTTP/1.1 to the environments' API servers.

InvokeRestApi's latency is compared with calling Airflow directly, and on that path a
general-purpose client (httpx on httpcore, anyio and h11) costs more CPU per call than
the rest of the request together. This one does only what the call needs: HTTP/1.1 over
pooled keep-alive connections on the event loop, responses parsed by httptools (the C
parser uvicorn uses). httpx still builds every request that is not a plain GET or DELETE
(query parameters, JSON bodies, paths that need percent-encoding) and decodes every
answer that is not passed on as it came, so those keep httpx's exact encoding.

It lives in the API layer because the domain knows nothing about HTTP: ``service/
rest_api.py`` states what it needs (``AirflowClient``) and ``server.py`` hands it this.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import httpx

from openmwaa.runtime.base import RuntimeFailure
from openmwaa.service.rest_api import REST_API_TIMEOUT, AirflowConnectError, AirflowHttpError

__all__ = ["AirflowConnectError", "AirflowHttp", "AirflowHttpError", "AirflowResponse"]

USER_AGENT = "openmwaa"
MAX_CONNECTIONS = 200
MAX_IDLE_CONNECTIONS = 50
"""Idle keep-alive connections kept per API server."""
IDLE_SECONDS = 4.0
"""An idle connection is not reused after this long: Airflow's API server (uvicorn) closes
idle connections after 5 s, and a request sent as it does so would fail."""
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
"""Paths sent as they are; others (spaces, '%', non-ASCII, '.' segments) are encoded by
httpx."""


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

    def document(self) -> Any:
        """The decoded body as JSON, ``{"detail": text}`` when it is not JSON, ``{}`` if empty."""
        decoded = self.decoded()
        try:
            return decoded.json() if decoded.content else {}
        except ValueError:
            return {"detail": decoded.text}


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

    def target(self, url: str, token: str) -> _Target:
        """A REST API base URL and a JWT, prepared once for many calls (cached by the caller)."""
        return _Target.of(url, token)

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
