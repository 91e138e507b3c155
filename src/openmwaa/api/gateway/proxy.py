"""The reverse proxy to an environment's Airflow API server (UI, ``/api/v2``, static).

Request bodies are streamed to Airflow as they arrive and answers streamed back, so
an upload costs the control plane a chunk of memory, not its size. Browsers keep
cookies per host, not per port, so the session cookie is kept under a per-endpoint
name (``_token_<port>``) in the browser and renamed to Airflow's on the way in and
out; other endpoints' cookies are never forwarded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from openmwaa.api import console_sso
from openmwaa.api.asgi import HOP_BY_HOP, Receive, Scope, Send
from openmwaa.api.gateway.common import header, html_reply
from openmwaa.service.airflow3 import AirflowDialect

_SET_BY_PROXY = frozenset(
    {b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded"}
)


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


def new_client() -> httpx.AsyncClient:
    """The connection pool every endpoint's proxy shares."""
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(60.0, connect=5.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
    )
    # Requests go upstream with the client's headers only (no gzip the client didn't ask for).
    for default in ("accept", "accept-encoding", "user-agent"):
        del client.headers[default]
    return client


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives; ClientGone if the client leaves halfway."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


class Proxy:
    def __init__(self, name: str, cookie: str, client: httpx.AsyncClient) -> None:
        self._name = name
        self._cookie = cookie
        self._client = client

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, base: str, dialect: AirflowDialect
    ) -> None:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = base + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers: list[tuple[bytes, bytes]] = []
        length = chunked = False
        for key, value in scope["headers"]:
            lower = key.lower()
            if lower == b"transfer-encoding":
                chunked = True
            if lower in HOP_BY_HOP or lower in _SET_BY_PROXY:
                continue
            if lower == b"content-length":
                length = value.strip() not in (b"", b"0")
            if lower == b"cookie":
                value = self._inbound_cookies(value, dialect)
                if not value:
                    continue
            headers.append((lower, value))
        host = header(scope, b"host") or ""
        client = scope.get("client") or ("", 0)
        # A TLS terminator in front may say https; the client address and host are ours to say.
        proto = (header(scope, b"x-forwarded-proto") or "http").encode("latin-1")
        headers += [
            (b"x-forwarded-for", str(client[0]).encode()),
            (b"x-forwarded-host", host.encode("latin-1")),
            (b"x-forwarded-proto", proto),
        ]
        if chunked or not length:
            # Airflow reads the body until its end; without a length httpx sends it chunked.
            headers = [h for h in headers if h[0] != b"content-length"]
        request = self._client.build_request(
            scope["method"],
            url,
            headers=headers,
            content=_body(receive) if chunked or length else None,
        )
        try:
            response = await self._client.send(request, stream=True)
        except ClientGone:
            return
        except httpx.HTTPError:
            raise html_reply(
                502,
                console_sso.error_page(
                    "Airflow is not answering",
                    f"The web server of {self._name} did not answer; it may be restarting.",
                    self._name,
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

    def _inbound_cookies(self, value: bytes, dialect: AirflowDialect) -> bytes:
        """Only this endpoint's session cookie goes upstream, under Airflow's name."""
        kept = []
        own = self._cookie.encode()
        plain = dialect.session_cookie.encode()
        for part in value.split(b";"):
            name, _, content = part.strip().partition(b"=")
            if name == own:
                kept.append(plain + b"=" + content)
            elif name == plain or name.startswith(plain + b"_"):
                continue
            elif name:
                kept.append(part.strip())
        return b"; ".join(kept)

    def _outbound_cookie(self, value: bytes, dialect: AirflowDialect) -> bytes:
        plain = dialect.session_cookie.encode() + b"="
        if value.startswith(plain):
            return self._cookie.encode() + b"=" + value[len(plain) :]
        return value
