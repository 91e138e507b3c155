"""InvokeRestApi's HTTP client and state cache, against real sockets and a real store.

The client is exercised end to end by the other tests of this folder (a real Airflow);
here a small HTTP server on loopback gives it the answers Airflow rarely gives: chunked
and close-delimited bodies, dropped connections, silence. None of these tests needs the
folder's Airflow environment.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvloop

from openmwaa.api.airflow_http import (
    AirflowConnectError,
    AirflowHttp,
    AirflowHttpError,
    _Target,
)
from openmwaa.store.db import Store
from openmwaa.store.models import EnvironmentRow

Answer = Callable[[bytes], Awaitable[bytes | None]]
"""What the test server answers to a request (its head and body); None: close at once."""

JSON_OK = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"a": true}'
)


class FakeApiServer:
    """An HTTP/1.1 server on loopback that records requests and connections."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0
        self.close_after = False
        """Close each connection after its next answer (besides answers framed by it)."""

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                request = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(request)
                reply = await self.answer(request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                framing = reply.lower().partition(b"\r\n\r\n")[0]
                if self.close_after or not (
                    b"content-length" in framing or b"transfer-encoding" in framing
                ):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            writer.close()

    def target(self) -> _Target:
        return _Target.of(f"http://127.0.0.1:{self.port}/api/v2", "the-jwt")


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop.run(test())


def constant(reply: bytes | None) -> Answer:
    async def answer(_request: bytes) -> bytes | None:
        return reply

    return answer


def test_keep_alive_connections_are_reused() -> None:
    async def test() -> None:
        fake = FakeApiServer(constant(JSON_OK))
        async with await fake.start():
            http = AirflowHttp()
            for _ in range(3):
                response = await http.request(fake.target(), "GET", "/dags")
                assert (response.status_code, response.content) == (200, b'{"a": true}')
                assert response.is_json()
        assert fake.connections == 1
        head = fake.requests[0].decode()
        assert head.startswith("GET /api/v2/dags HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{fake.port}\r\n" in head
        assert "Authorization: Bearer the-jwt\r\n" in head
        assert "accept-encoding" not in head.lower()

    run(test)


def test_chunked_and_close_delimited_bodies() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n4\r\n[1, \r\n2\r\n2]\r\n0\r\n\r\n"
    )
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[3, 4]"

    async def test() -> None:
        replies = iter([chunked, until_close])

        async def answer(_request: bytes) -> bytes | None:
            return next(replies)

        fake = FakeApiServer(answer)
        async with await fake.start():
            http = AirflowHttp()
            first = await http.request(fake.target(), "GET", "/a")
            assert json.loads(first.content) == [1, 2]
            second = await http.request(fake.target(), "GET", "/b")
            assert json.loads(second.content) == [3, 4]
            assert fake.connections == 1
            # a close-delimited answer leaves no connection to reuse
            fake.answer = constant(JSON_OK)
            await http.request(fake.target(), "GET", "/c")
            assert fake.connections == 2

    run(test)


def test_connection_close_and_a_server_that_closes_idle_connections() -> None:
    async def test() -> None:
        fake = FakeApiServer(constant(JSON_OK.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n")))
        async with await fake.start():
            http = AirflowHttp()
            await http.request(fake.target(), "GET", "/dags")
            await http.request(fake.target(), "GET", "/dags")
            assert fake.connections == 2

            fake.answer = constant(JSON_OK)
            await http.request(fake.target(), "GET", "/dags")
            # the server drops the idle connection without a word: the next call sees it
            closing = fake.connections
            for connection in http._idle[("http", "127.0.0.1", fake.port)]:
                assert connection.transport is not None
                connection.transport.close()
            await asyncio.sleep(0.05)
            await http.request(fake.target(), "GET", "/dags")
            assert fake.connections == closing + 1

    run(test)


def test_failures_are_connect_errors_http_errors_or_timeouts() -> None:
    async def test() -> None:
        fake = FakeApiServer(constant(None))
        server = await fake.start()
        async with server:
            http = AirflowHttp(timeout=0.5)
            with pytest.raises(AirflowHttpError, match="disconnected") as info:
                await http.request(fake.target(), "GET", "/dags")
            assert not isinstance(info.value, AirflowConnectError)

            # a body cut short
            fake.answer = constant(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            fake.close_after = True
            with pytest.raises(AirflowHttpError, match="disconnected"):
                await http.request(fake.target(), "GET", "/dags")
            fake.close_after = False

            fake.answer = constant(b"not http at all\r\n\r\n")
            with pytest.raises(AirflowHttpError, match="Invalid HTTP response"):
                await http.request(fake.target(), "GET", "/dags")

            async def silent(_request: bytes) -> bytes | None:
                await asyncio.sleep(5)
                return JSON_OK

            fake.answer = silent
            with pytest.raises(TimeoutError):
                await http.request(fake.target(), "GET", "/dags")
            assert not http._idle.get(("http", "127.0.0.1", fake.port))
        with pytest.raises(AirflowConnectError):
            await http.request(fake.target(), "GET", "/dags")

    run(test)


def test_bodies_queries_and_paths_are_encoded_as_httpx_does() -> None:
    async def test() -> None:
        fake = FakeApiServer(constant(JSON_OK))
        async with await fake.start():
            http = AirflowHttp()
            target = fake.target()
            await http.request(
                target,
                "POST",
                "/dags/a b/dagRuns",
                params={"limit": 5, "tags": ["x", "é"], "on": True},
                json={"conf": {"k": "é"}},
            )
            await http.request(target, "PATCH", "/dags/my.dag")
            await http.request(target, "GET", "/dags/./x")
        post, patch, get = (r.decode() for r in fake.requests)
        assert post.startswith(
            "POST /api/v2/dags/a%20b/dagRuns?limit=5&tags=x&tags=%C3%A9&on=true HTTP/1.1\r\n"
        )
        assert "content-type: application/json\r\n" in post.lower()
        body = json.dumps({"conf": {"k": "é"}}, ensure_ascii=False, separators=(",", ":"))
        assert post.endswith("\r\n\r\n" + body)
        assert f"content-length: {len(body.encode())}\r\n" in post.lower()
        assert patch.startswith("PATCH /api/v2/dags/my.dag HTTP/1.1\r\n")
        assert "content-length: 0\r\n" in patch.lower()
        assert get.startswith("GET /api/v2/dags/x HTTP/1.1\r\n")

    run(test)


def test_answers_not_passed_on_are_decoded_as_httpx_does() -> None:
    import gzip

    async def test() -> None:
        document = gzip.compress(b'{"detail": "gone"}')
        reply = (
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(document)
        ) + document
        fake = FakeApiServer(constant(reply))
        async with await fake.start():
            response = await AirflowHttp().request(fake.target(), "GET", "/dags/x")
        assert response.status_code == 404
        assert not response.is_json()
        assert response.decoded().json() == {"detail": "gone"}

    run(test)


def _row(name: str, status: str) -> EnvironmentRow:
    return EnvironmentRow(
        name=name,
        arn=f"arn:aws:airflow:us-east-1:123456789012:environment/{name}",
        status=status,
        created_at=datetime.now(UTC),
        spec={},
        applied={"AirflowVersion": "3.3.2"},
        tags={},
        generation=1,
    )


def test_state_cache_never_hides_a_write_of_this_process(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    assert store.environment_state("env", max_age=60) is None
    assert store.insert_environment(_row("env", "CREATING"))
    assert store.update_environment("env", status="AVAILABLE")
    state = store.environment_state("env", max_age=60)
    assert state is not None and state.status == "AVAILABLE"
    assert store.environment_state("env", max_age=60) is state  # reused

    assert store.update_environment("env", status="UPDATING", generation=2)
    state = store.environment_state("env", max_age=60)
    assert state is not None and (state.status, state.generation) == ("UPDATING", 2)

    # a write the cache did not see (another process): at most max_age late
    with store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE environments SET status = 'DELETING'")
    assert store.environment_state("env", max_age=60) is state
    fresh = store.environment_state("env", max_age=0)
    assert fresh is not None and fresh.status == "DELETING"

    store.delete_environment("env")
    assert store.environment_state("env", max_age=60) is None
    store.close()
