"""The listeners' HTTP limits (api/serving.py) on a real uvicorn server in this process,
with timeouts short enough to watch, and the body reader's own deadline."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from live_server import free_port

from openmwaa.api import serving
from openmwaa.api.asgi import BodyIncomplete, read_body


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the length of the request body it read."""
    body = await read_body(receive, 1 << 20, timeout=5)
    payload = str(len(body)).encode()
    headers = [(b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@contextlib.contextmanager
def running(**limits: Any) -> Iterator[int]:
    """A uvicorn server built by serving.uvicorn_config, in a thread; yields its port."""
    port = free_port()
    config = serving.uvicorn_config(echo_app, host="127.0.0.1", port=port, **limits)
    server = serving.uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing; AssertionError if still open after ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {seconds} s (got {data!r})") from None
    except ConnectionResetError:
        pass
    return data


def ask(port: int, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        return closed_within(sock, 5)


def test_silent_slow_and_stalled_connections_are_closed() -> None:
    with running(header_timeout=0.5, body_idle_timeout=0.5) as port:
        silent = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        start = time.monotonic()
        slow.sendall(b"GET / HTTP/1.1\r\n")
        for _ in range(3):  # a byte now and then does not keep it open
            time.sleep(0.15)
            slow.sendall(b"X")
        assert closed_within(silent, 1.5).startswith(b"HTTP/1.1 408 Request Timeout")
        closed_within(slow, 1.5)
        closed_within(stalled, 1.5)
        assert time.monotonic() - start < 2
        assert ask(port, b"hello").endswith(b"\r\n\r\n5")
        for sock in (silent, slow, stalled):
            sock.close()


def test_keep_alive_requests_each_get_the_header_timeout_again() -> None:
    with running(header_timeout=0.6) as port, socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(3):
            time.sleep(0.3)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(2)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        closed_within(s, 1.5)


def test_a_slow_body_that_keeps_coming_is_not_cut() -> None:
    with (
        running(body_idle_timeout=0.5) as port,
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            time.sleep(0.2)
            sock.sendall(b"x")
        assert sock.recv(4096).endswith(b"\r\n\r\n8")


def test_oversized_headers_get_431() -> None:
    with running(max_header_bytes=4096) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
            assert closed_within(sock, 2).startswith(b"HTTP/1.1 431")
        assert ask(port).endswith(b"\r\n\r\n0")


def test_a_full_budget_closes_the_connection_idle_longest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with running() as port:
        ask(port)  # the budget's limit is computed by now
        monkeypatch.setattr(serving._BUDGET, "limit", serving._BUDGET.open + 3)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.2)
        assert ask(port, b"in").endswith(b"\r\n\r\n2")  # room made: the oldest idle one goes
        assert closed_within(idle[0], 2) == b""
        for sock in idle:
            sock.close()


def test_read_body_gives_up_on_a_stalled_body() -> None:
    async def stalled() -> dict[str, Any]:
        if not hasattr(stalled, "sent"):
            stalled.sent = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": b"abc", "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def main() -> None:
        start = time.monotonic()
        with pytest.raises(BodyIncomplete):
            await read_body(stalled, 100, timeout=0.2)
        assert time.monotonic() - start < 1
        with pytest.raises(BodyIncomplete):
            await read_body(gone, 100, timeout=1)
        assert await read_body(gone, 100) == b""  # without a timeout: as before

    asyncio.run(main())
