"""uvicorn as every listener of the server uses it, with the timeouts uvicorn lacks.

uvicorn closes an idle keep-alive connection, but nothing else: a connection that
never sends a byte, sends its headers one byte at a time, or stops in the middle of
a body stays open for ever, and a few hundred of them took the process to its
file-descriptor limit (a healthy environment's health check then failed). The
protocol class here adds, per connection:

- a header timeout: the request's headers must be complete within ``header_timeout``
  seconds of the connection (or of the previous response), else it is closed;
- a header size limit (httptools has none): larger headers get 431 and a close;
- a body idle timeout: a request body that stops arriving for ``body_idle_timeout``
  seconds (while the application is waiting for it) closes the connection;

and, for the whole process, a budget of open connections below the descriptor limit:
when it is spent, the connection waiting longest for a request is closed to make room,
and if none is waiting, the new one is refused.
"""

from __future__ import annotations

import asyncio
import resource
from collections import OrderedDict
from typing import Any

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["HEADER_TIMEOUT", "BODY_IDLE_TIMEOUT", "KEEP_ALIVE", "uvicorn_config"]

HEADER_TIMEOUT = 10.0
"""Seconds from a connection (or the end of the previous response) to complete headers."""
BODY_IDLE_TIMEOUT = 15.0
"""Seconds a request body may stop arriving while the application waits for it."""
KEEP_ALIVE = 5
"""Seconds an idle keep-alive connection is kept (uvicorn's own default)."""
MAX_HEADER_BYTES = 64 * 1024
"""Request line and headers together; nothing this server answers needs more."""
FD_RESERVE = 256
"""Descriptors kept out of the connection budget: store, logs, pipes of the
environments' processes, outgoing connections to Airflow."""


class _Budget:
    """Open connections of every listener of the process, under one limit.

    Connections waiting for a request (new, or idle between requests) are kept in
    arrival order, so that the oldest can be closed to make room for a new one.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        self.open = 0
        self.waiting: OrderedDict[_Protocol, None] = OrderedDict()

    def capacity(self) -> int:
        if self.limit is None:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if hard != resource.RLIM_INFINITY and soft < hard:
                # The default soft limit (often 1024) is far below what the kernel allows.
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            self.limit = max(64, soft - max(FD_RESERVE, soft // 4))
        return self.limit

    def admit(self, protocol: _Protocol) -> bool:
        """Count a new connection; False if there is no room even after closing another."""
        if self.open >= self.capacity():
            if not self.waiting:
                return False
            oldest, _ = self.waiting.popitem(last=False)
            oldest.close_idle()
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


_BUDGET = _Budget()


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body timeouts (module docstring)."""

    header_timeout = HEADER_TIMEOUT
    body_idle_timeout = BODY_IDLE_TIMEOUT
    max_header_bytes = MAX_HEADER_BYTES

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._admitted = False
        self._awaiting_headers = False
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not _BUDGET.admit(self):
            transport.abort()
            return
        self._admitted = True
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        _BUDGET.release()
        _BUDGET.waiting.pop(self, None)
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The connection goes on under another protocol, which never reports back here.
        self._awaiting_headers = False
        self._cancel_header_timer()
        self._cancel_body_timer()
        if self._admitted:
            self._admitted = False
            _BUDGET.release()
            _BUDGET.waiting.pop(self, None)
        super().handle_websocket_upgrade()

    def close_idle(self) -> None:
        """Closed to make room for a new connection (see _Budget)."""
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes:
            self._refuse(431, b"Request Header Fields Too Large")

    # -- headers ---------------------------------------------------------------------

    def _await_headers(self) -> None:
        self._awaiting_headers = True
        self._header_bytes = 0
        _BUDGET.waiting[self] = None
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self._refuse(408, b"Request Timeout")

    def _refuse(self, status: int, reason: bytes) -> None:
        self._awaiting_headers = False
        if self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % (status, reason)
        )
        self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        _BUDGET.waiting.pop(self, None)
        self._cancel_header_timer()
        super().on_headers_complete()
        self._body_seen = self.loop.time()
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(self.body_idle_timeout, self._body_check)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        # Nothing pending (the last request parsed is answered): wait for the next one.
        if self.cycle is None or self.cycle.response_complete:
            self._await_headers()

    # -- body ------------------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        self._body_seen = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        idle = self.loop.time() - self._body_seen
        if self.flow.read_paused or self.cycle.response_complete:
            # Not the client's fault: the application has not taken what came (or has
            # answered already and the rest of the body is being discarded).
            idle = 0.0
        if idle >= self.body_idle_timeout:
            self.transport.close()
            return
        self._body_timer = self.loop.call_later(self.body_idle_timeout - idle, self._body_check)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def protocol_class(
    header_timeout: float = HEADER_TIMEOUT,
    body_idle_timeout: float = BODY_IDLE_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> type[asyncio.Protocol]:
    """The HTTP protocol class with these limits (a subclass per set of values)."""
    return type(
        "OpenmwaaHttpProtocol",
        (_Protocol,),
        {
            "header_timeout": header_timeout,
            "body_idle_timeout": body_idle_timeout,
            "max_header_bytes": max_header_bytes,
        },
    )


def uvicorn_config(
    app: Any,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    body_idle_timeout: float = BODY_IDLE_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
    **overrides: Any,
) -> uvicorn.Config:
    """A uvicorn.Config for one of the server's listeners.

    Defaults: no access log, no lifespan, no Server header, warnings only, keep-alive
    ``KEEP_ALIVE`` s, and the protocol class above. ``overrides`` are passed to
    uvicorn.Config as they are (``host``, ``port``, ``timeout_keep_alive``,
    ``date_header``, ``timeout_graceful_shutdown``...).
    """
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "server_header": False,
        "timeout_keep_alive": KEEP_ALIVE,
        "http": protocol_class(header_timeout, body_idle_timeout, max_header_bytes),
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
