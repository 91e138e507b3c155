"""Denial of service found by fuzzing the API: no request may hold the event loop, read
a body it cannot authenticate, or keep a connection open without sending."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from api_support import REGION, arn, assert_error, create_env, signed_request
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from live_server import Server, drop_postgres_database, postgres_database, wait_status

from openmwaa.api.serving import BODY_IDLE_TIMEOUT, HEADER_TIMEOUT

pytestmark = pytest.mark.usefixtures("delete_module_environments")


def signed_headers(
    server: Server, method: str, path: str, body: bytes = b"", key: str | None = None
) -> dict[str, str]:
    creds = server.credentials()
    request = AWSRequest(method=method, url=server.endpoint + path, data=body)
    SigV4Auth(Credentials(key or creds["key"], creds["secret"]), "airflow", REGION).add_auth(
        request
    )
    return {"Host": f"127.0.0.1:{server.port}", **dict(request.headers)}


def raw_request(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def connect(server: Server, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return sock


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes; AssertionError if it does not by then."""
    data = b""
    while True:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open (got {data[:200]!r})"
            ) from None
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@contextlib.contextmanager
def answering(server: Server) -> Iterator[list[float]]:
    """Call the API every 0.2 s while the block runs; the list gets each call's latency."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            start = time.monotonic()
            response = signed_request(server, "GET", "/environments?MaxResults=1")
            assert response.status_code == 200
            latencies.append(time.monotonic() - start)
            stop.wait(0.2)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(poll)
        try:
            yield latencies
        finally:
            stop.set()
            future.result()


# -- (a) validation is bounded and comes after authorization -----------------------------


def test_values_far_over_their_maximum_are_refused_at_once(
    server: Server, mwaa: Any, env_name: str
) -> None:
    create_env(server, mwaa, env_name)
    wait_status(mwaa, env_name, {"AVAILABLE"})
    window = ("MON:00:00" * 29_000 + "\n").encode()  # 256 KB; the pattern is .*X.*
    body = b'{"WeeklyMaintenanceWindowStart": "' + window[:-1] + b'\\n"}'
    long_arn = arn(env_name) + "a" * 65_000
    with answering(server) as latencies:
        start = time.monotonic()
        response = signed_request(server, "PATCH", f"/environments/{env_name}", body)
        assert_error(response, "ValidationException", 400)
        assert "Member must have length less than or equal to 9" in response.text
        response = signed_request(server, "GET", f"/tags/{quote(long_arn, safe='')}")
        assert_error(response, "ValidationException", 400)
        assert "Member must have length less than or equal to 1224" in response.text
        assert time.monotonic() - start < 2
        time.sleep(0.5)
    assert max(latencies) < 1.5, latencies


def test_a_refused_caller_gets_access_denied_before_its_body_is_validated(
    server: Server, env_name: str
) -> None:
    done = server.cli("keys", "create", "nobody", "--policy", _policy("Deny"))
    key = done.stdout.split('"AccessKeyId": "')[1].split('"')[0]
    secret = done.stdout.split('"SecretAccessKey": "')[1].split('"')[0]
    client = server.client(key=key, secret=secret, parameter_validation=False)
    with pytest.raises(ClientError) as excinfo:
        client.update_environment(Name=env_name, WeeklyMaintenanceWindowStart="x" * 100_000)
    assert excinfo.value.response["Error"]["Code"] == "AccessDeniedException"


def _policy(effect: str) -> str:
    return (
        '{"Version": "2012-10-17", "Statement": '
        f'{{"Effect": "{effect}", "Action": "airflow:*", "Resource": "*"}}}}'
    )


# -- (b) bodies are read only for requests that can be authenticated ---------------------


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unsigned", "MissingAuthenticationTokenException"),
        ("unknown-key", "UnrecognizedClientException"),
        ("expired", "InvalidSignatureException"),
    ],
)
def test_unauthenticated_bodies_are_not_read(server: Server, case: str, code: str) -> None:
    path = "/openmwaa/workers/x/report"
    headers = {"Host": f"127.0.0.1:{server.port}"}
    if case == "unknown-key":
        headers = signed_headers(server, "POST", path, key="AKIA0000000000000000")
    elif case == "expired":
        headers = signed_headers(server, "POST", path)
        headers["X-Amz-Date"] = "20200101T000000Z"
    headers["Content-Length"] = str(15 * 1024 * 1024)
    with connect(server) as sock:
        sock.sendall(raw_request("POST", path, headers) + b"x" * 1000)  # and stall
        answer = read_until_closed(sock, time.monotonic() + 3)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 40"), answer[:300]
    assert code.encode() in answer


@pytest.fixture
def postgres_server(tmp_path: Path) -> Iterator[Server]:
    """A server of this test's own on PostgreSQL, whose tables a test can lock."""
    url = postgres_database()
    server = Server(tmp_path / "data", ["--backend", "test", "--database-url", url])
    server.start()
    try:
        yield server
    finally:
        server.stop()
        drop_postgres_database(url)


def test_key_lookup_does_not_hold_the_event_loop(postgres_server: Server) -> None:
    """A signed request whose key lookup waits on a locked store must not stop the server
    from answering others (here an unsigned request, refused without a store read)."""
    server = postgres_server
    url = server.args[server.args.index("--database-url") + 1]
    with psycopg.connect(url) as lock, ThreadPoolExecutor(1) as pool:
        lock.execute("LOCK TABLE access_keys IN ACCESS EXCLUSIVE MODE")
        waiting = pool.submit(signed_request, server, "GET", "/environments")
        time.sleep(0.5)
        try:
            assert not waiting.done()
            start = time.monotonic()
            response = httpx.get(f"{server.endpoint}/environments", timeout=10)
            assert_error(response, "MissingAuthenticationTokenException", 403)
            assert time.monotonic() - start < 1
        finally:
            lock.rollback()
        assert waiting.result().status_code == 200


# -- (c) header and body timeouts ---------------------------------------------------------


def test_slow_and_silent_connections_are_closed_and_the_server_keeps_answering(
    server: Server,
) -> None:
    silent = [connect(server) for _ in range(100)]
    slow = [connect(server) for _ in range(100)]
    for sock in slow:
        sock.sendall(b"GET /environments HTTP/1.1\r\nHost: x\r\n")
    body = b'{"MaxWorkers": 2}'
    stalled = connect(server)
    headers = signed_headers(server, "PATCH", "/environments/nosuchenv", body)
    headers["Content-Length"] = str(len(body))
    stalled.sendall(raw_request("PATCH", "/environments/nosuchenv", headers) + body[:5])
    opened = time.monotonic()
    try:
        with answering(server) as latencies:
            for i in range(int(HEADER_TIMEOUT) - 2):  # a header byte a second keeps none open
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"X-Slow-%d: 1\r\n" % i)
                time.sleep(1)
            deadline = opened + HEADER_TIMEOUT + 4
            for sock in silent + slow:
                answer = read_until_closed(sock, deadline)
                assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]
            read_until_closed(stalled, opened + BODY_IDLE_TIMEOUT + 4)
        assert latencies and max(latencies) < 1.5, latencies
    finally:
        for sock in [*silent, *slow, stalled]:
            sock.close()


def test_oversized_headers_are_refused(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /environments HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):
            for _ in range(100):
                sock.sendall(b"X-Big: " + b"a" * 4096 + b"\r\n")
        answer = read_until_closed(sock, time.monotonic() + 5)
    assert answer.startswith(b"HTTP/1.1 431") or answer == b""


# -- (f) '+' in the query is decoded the same way by the signature check and the parser ----


def test_a_signature_for_one_tag_key_does_not_remove_another(
    server: Server, mwaa: Any, env_name: str
) -> None:
    resource = create_env(server, mwaa, env_name, Tags={"a+b": "plus", "a b": "space"})
    target = f"/tags/{quote(resource, safe='')}"
    signed_for_plus = signed_headers(server, "DELETE", f"{target}?tagKeys=a%2Bb")
    sent = httpx.delete(
        f"{server.endpoint}{target}?tagKeys=a+b", headers=signed_for_plus, timeout=30
    )
    assert_error(sent, "InvalidSignatureException", 403)
    assert mwaa.list_tags_for_resource(ResourceArn=resource)["Tags"] == {
        "a+b": "plus",
        "a b": "space",
    }
    # signed for a space, sent with '+' (a form encoder's way): the space is what goes
    signed_for_space = signed_headers(server, "DELETE", f"{target}?tagKeys=a%20b")
    sent = httpx.delete(
        f"{server.endpoint}{target}?tagKeys=a+b", headers=signed_for_space, timeout=30
    )
    assert sent.status_code == 200, sent.text
    assert mwaa.list_tags_for_resource(ResourceArn=resource)["Tags"] == {"a+b": "plus"}
