"""The environment gateway on its own: CLI limits, streamed uploads, login CSRF, listeners.

In-process, over a real store, real listeners and a stand-in upstream (gateway_support);
none of these tests needs the folder's Airflow environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import uvloop
from gateway_support import FakeDomain, Upstream, environment_row, gateway, remove

from openmwaa.api.gateway.cli import MAX_CLI_RUNS

ENV = "gw"
MiB = 1024 * 1024


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop.run(test())


def test_at_most_four_cli_commands_run_at_once_then_429(tmp_path: Path) -> None:
    async def test() -> None:
        domain = FakeDomain(cli_seconds=2.0)
        async with gateway(tmp_path, domain) as (manager, store, _):
            store.insert_environment(environment_row(ENV))
            await manager.sync()
            url = f"http://127.0.0.1:{manager.listening()[ENV]}/aws_mwaa/cli"
            async with httpx.AsyncClient(timeout=30) as client:

                async def call(i: int) -> httpx.Response:
                    headers = {"Authorization": f"Bearer token-{i}"}
                    return await client.post(url, content="version", headers=headers)

                answers = await asyncio.gather(*(call(i) for i in range(MAX_CLI_RUNS + 3)))
                statuses = sorted(a.status_code for a in answers)
                assert statuses == [200] * MAX_CLI_RUNS + [429] * 3, statuses
                refused = [a for a in answers if a.status_code == 429]
                assert "retry" in refused[0].json()["message"]
                assert refused[0].headers["retry-after"].isdigit()
                # A refused run did not use its token: the same one works now.
                assert len(domain.redeemed) == MAX_CLI_RUNS
                retried = await client.post(
                    url,
                    content="version",
                    headers={"Authorization": refused[0].request.headers["authorization"]},
                )
                assert retried.status_code == 200, retried.text

    run(test)


async def _chunks(total: int, chunk: int, after_first: asyncio.Event) -> AsyncIterator[bytes]:
    """``total`` bytes; after the first chunk, wait until the upstream has seen bytes: a
    gateway that buffers the whole body before sending it on never lets that happen."""
    block = hashlib.sha256(b"x").digest() * (chunk // 32)
    sent = 0
    while sent < total:
        yield block
        sent += len(block)
        if sent == len(block):
            await asyncio.wait_for(after_first.wait(), 10)


def test_the_proxy_streams_large_uploads(tmp_path: Path) -> None:
    total = 48 * MiB  # larger than the 32 MiB the gateway once buffered (and refused beyond)

    async def test() -> None:
        upstream = Upstream()
        async with upstream.serving() as base:
            domain = FakeDomain(upstream=base)
            async with gateway(tmp_path, domain) as (manager, store, _):
                store.insert_environment(environment_row(ENV))
                await manager.sync()
                url = f"http://127.0.0.1:{manager.listening()[ENV]}/api/v2/upload"
                expected = hashlib.sha256()
                block = hashlib.sha256(b"x").digest() * (MiB // 32)
                for _ in range(total // MiB):
                    expected.update(block)
                async with httpx.AsyncClient(timeout=60) as client:
                    for headers in ({}, {"content-length": str(total)}):  # chunked, then sized
                        upstream.first_bytes.clear()
                        answer = await client.post(
                            url,
                            content=_chunks(total, MiB, upstream.first_bytes),
                            headers=headers,
                        )
                        assert answer.status_code == 200, answer.text
                        assert answer.json() == {"bytes": total, "sha256": expected.hexdigest()}
                    small = await client.post(url, content=b"abc")
                    assert small.json()["bytes"] == 3
                    empty = await client.post(url)
                    assert empty.json()["bytes"] == 0

    run(test)


def test_cross_site_login_posts_are_refused(tmp_path: Path) -> None:
    async def test() -> None:
        upstream = Upstream()
        async with upstream.serving() as base:
            domain = FakeDomain(upstream=base)
            async with gateway(tmp_path, domain) as (manager, store, _):
                store.insert_environment(environment_row(ENV))
                await manager.sync()
                port = manager.listening()[ENV]
                own = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=own, timeout=30) as client:

                    async def login(path: str, token: str, **headers: str) -> httpx.Response:
                        return await client.post(path, data={"token": token}, headers=headers)

                    for path in ("/aws_mwaa/aws-console-sso", "/pluginsv2/aws_mwaa/login"):
                        for i, headers in enumerate(
                            [
                                {"origin": "http://evil.example"},
                                {"origin": "null"},
                                {"origin": f"http://127.0.0.1:{port + 1}"},  # another endpoint
                                {"sec-fetch-site": "cross-site", "origin": own},
                                {"sec-fetch-site": "same-site"},
                            ]
                        ):
                            refused = await login(path, f"{path}-{i}", **headers)
                            assert refused.status_code == 403, (path, headers)
                            assert "Sign-in refused" in refused.text
                            assert "set-cookie" not in refused.headers
                        # no token was used by a refused POST
                        assert not [t for t in domain.redeemed if "-ok-" not in t]
                        # The endpoint's own page, and clients that are not browsers.
                        for i, headers in enumerate(
                            [
                                {"sec-fetch-site": "same-origin", "origin": "null"},
                                {"origin": own},
                                {},
                            ]
                        ):
                            answer = await login(path, f"{path}-ok-{i}", **headers)
                            assert answer.status_code in (200, 303), (path, headers, answer.text)
                            assert f"_token_{port}=the-jwt" in answer.headers["set-cookie"]

    run(test)


def test_deleted_environments_listeners_close_concurrently(tmp_path: Path) -> None:
    count = 200

    async def test() -> None:
        async with gateway(tmp_path, FakeDomain(), ports=count + 50) as (manager, store, _):
            names = [f"old{i}" for i in range(count)]
            for name in names:
                store.insert_environment(environment_row(name))
            await manager.sync()
            old = manager.listening()
            assert len(old) == count
            for name in names:
                remove(store, name)
            store.insert_environment(environment_row("new"))
            started = time.monotonic()
            await manager.sync()
            elapsed = time.monotonic() - started
            assert set(manager.listening()) == {"new"}
            # The new endpoint answers at once, while the old ones are still closing.
            async with httpx.AsyncClient(timeout=10) as client:
                page = await client.get(
                    f"http://127.0.0.1:{manager.listening()['new']}/aws_mwaa/aws-console-sso"
                )
                assert page.status_code == 200
            assert elapsed < 3, f"a pass took {elapsed:.1f} s closing {count} listeners"
            deadline = time.monotonic() + 10
            while manager.closing() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert manager.closing() == 0
            for port in list(old.values())[:: count // 10]:
                with socket.socket() as sock:
                    assert sock.connect_ex(("127.0.0.1", port)) != 0, port

    run(test)


def test_a_port_held_by_another_process_is_never_the_endpoint(tmp_path: Path) -> None:
    async def test() -> None:
        async with gateway(tmp_path, FakeDomain()) as (manager, store, addresses):
            taken = addresses.port(ENV)
            squatter = socket.socket()
            squatter.bind(("127.0.0.1", taken))
            squatter.listen()
            try:
                store.insert_environment(environment_row(ENV))
                await manager.sync()
                port = manager.listening()[ENV]
                assert port != taken
                assert addresses.url(ENV, "PRIVATE_ONLY") == f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(timeout=10) as client:
                    page = await client.get(f"http://127.0.0.1:{port}/aws_mwaa/aws-console-sso")
                    assert page.status_code == 200 and ENV in page.text
                await manager.sync()  # stays where it is
                assert manager.listening()[ENV] == port
            finally:
                squatter.close()

    run(test)
