"""Helpers shared by the live-server API tests (imported as a plain module).

Environments made here are remembered per server so each test module can delete
its own at the end: the test backend's processes outlive the control plane.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from live_server import REQUIRED, Server

MARKER = "openmwaa-test-environment"
ACCOUNT = "123456789012"
REGION = "us-east-1"

_created: dict[Path, set[str]] = {}


def arn(name: str) -> str:
    return f"arn:aws:airflow:{REGION}:{ACCOUNT}:environment/{name}"


def remember(server: Server, name: str) -> None:
    """Delete ``name`` at the module's cleanup."""
    _created.setdefault(server.data_dir, set()).add(name)


def create_env(server: Server, client: Any, name: str, **fields: Any) -> str:
    """CreateEnvironment with the required fields (overridable); remembered for cleanup."""
    remember(server, name)
    return str(client.create_environment(Name=name, **{**REQUIRED, **fields})["Arn"])


def cleanup(server: Server, client: Any, timeout: float = 30) -> None:
    """Delete every environment this module made on ``server`` and wait until they are gone."""
    names = _created.pop(server.data_dir, set())
    for name in names:
        with contextlib.suppress(ClientError):
            client.delete_environment(Name=name)
    deadline = time.monotonic() + timeout
    while names and time.monotonic() < deadline:
        names = {n for n in names if not _gone(client, n)}
        time.sleep(0.2)
    assert not names, f"environments not deleted: {names}"


def _gone(client: Any, name: str) -> bool:
    try:
        client.get_environment(Name=name)
    except client.exceptions.ResourceNotFoundException:
        return True
    return False


def error_code(excinfo: Any) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def error_message(excinfo: Any) -> str:
    return str(excinfo.value.response["Error"]["Message"])


# -- the test backend's processes --------------------------------------------


def env_dir(server: Server, name: str) -> Path:
    return server.data_dir / "environments" / name


def env_process(server: Server, name: str) -> psutil.Process | None:
    """The test backend's live process for an environment, found through psutil."""
    pid_file = env_dir(server, name) / "process.pid"
    if not pid_file.is_file():  # absent, or the FIFO of held_in_creating
        return None
    try:
        process = psutil.Process(int(pid_file.read_text()))
        if MARKER in process.cmdline() and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def wait_no_process(process: psutil.Process, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {process.pid} still runs")


@contextlib.contextmanager
def held_in_creating(server: Server, name: str) -> Iterator[None]:
    """Keep ``name`` in CREATING while the block runs.

    The test backend reads ``process.pid`` before it starts a process; made a FIFO,
    that read blocks until a writer comes, so the reconciler's create step waits.
    On exit the FIFO is opened for writing (the reader gets an empty pid and goes
    on) and removed.
    """
    fifo = hold(server, name)
    try:
        yield
    finally:
        release(fifo)


def hold(server: Server, name: str) -> Path:
    """Make the FIFO of :func:`held_in_creating` (before the environment is created)."""
    directory = env_dir(server, name)
    directory.mkdir(parents=True, exist_ok=True)
    fifo = directory / "process.pid"
    os.mkfifo(fifo)
    return fifo


def release(fifo: Path, timeout: float = 5) -> None:
    """Let a reader blocked on ``fifo`` go on, and remove it."""
    fd = None
    deadline = time.monotonic() + timeout
    while fd is None and time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader (yet, or any more)
            time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()
    if fd is not None:
        os.close(fd)


# -- raw signed requests ---------------------------------------------------------


def signed_request(
    server: Server,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    key: str | None = None,
    secret: str | None = None,
    headers: dict[str, str] | None = None,
    when: datetime | None = None,
) -> httpx.Response:
    """Sign a request exactly as given with botocore's SigV4Auth and send it with httpx."""
    creds = server.credentials()
    request = AWSRequest(
        method=method,
        url=server.endpoint + path,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    credentials = Credentials(key or creds["key"], secret or creds["secret"])
    signer = SigV4Auth(credentials, "airflow", REGION)
    if when is None:
        signer.add_auth(request)
    else:  # sign as a client whose clock says ``when``
        stamp = when.astimezone(UTC).strftime(SIGV4_TIMESTAMP)
        request.context["timestamp"] = stamp
        request.headers["X-Amz-Date"] = stamp
        signer._modify_request_before_signing(request)
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        signer._inject_signature_to_request(request, signature)
    prepared = request.prepare()
    return httpx.request(
        method, prepared.url, content=body, headers=dict(prepared.headers), timeout=30
    )


def assert_error(response: httpx.Response, code: str, status: int) -> dict[str, Any]:
    """An AWS-shaped error: the type in ``x-amzn-ErrorType`` and a JSON body with a message."""
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-errortype"] == code
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("x-amzn-requestid")
    body = json.loads(response.content)
    assert body["__type"] == code
    message = body.get("Message", body.get("message"))
    assert isinstance(message, str) and message, body
    return dict(body)
