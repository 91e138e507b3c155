"""PostgreSQL and Redis servers of the tests' own, with passwords.

The machine's PostgreSQL trusts loopback and its Redis has no password, so any process on
the host is their admin: tests of isolation between environments need services where only
the admin URL's password opens the door. Each one runs in a temporary folder on a free port
and is stopped afterwards.

- ``private_postgres()`` / ``private_redis()``: context managers that start a fresh
  server and yield its admin URL (``postgresql://postgres:PW@127.0.0.1:PORT/postgres``,
  ``redis://:PW@127.0.0.1:PORT/0``).
- ``private_postgres_url`` / ``private_redis_url``: session-scoped pytest fixtures yielding
  the same URLs, one server per test run however many modules import them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import free_port

PG_BIN = Path(os.environ.get("OPENMWAA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Debian's PostgreSQL binaries (initdb, pg_ctl)."""
PG_USER = "postgres"
"""The OS user that runs the cluster when the tests run as root (initdb refuses root)."""


def _wait_port(port: int, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start on port {port}")


def _as_cluster_owner() -> dict[str, Any]:
    """Popen arguments that run a PostgreSQL binary as ``postgres`` when we are root."""
    return {"user": PG_USER, "group": PG_USER} if os.geteuid() == 0 else {}


@contextlib.contextmanager
def private_postgres(workdir: Path | None = None) -> Iterator[str]:
    """A PostgreSQL cluster of our own (scram-sha-256 everywhere, superuser ``postgres``
    with a generated password, listening on 127.0.0.1 only); yields its admin URL.

    As root the cluster runs as the ``postgres`` OS user, so ``workdir`` (default: the
    system's temporary folder) must be one that user can traverse."""
    root = Path(tempfile.mkdtemp(prefix="openmwaa-pg-", dir=workdir))
    data, password = root / "data", secrets.token_hex(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, PG_USER, PG_USER)
        shutil.chown(pwfile, PG_USER, PG_USER)
    owner = _as_cluster_owner()
    subprocess.run(
        [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
         "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
         "--no-sync"],
        check=True, capture_output=True, cwd=root, **owner,
    )  # fmt: skip
    pwfile.unlink()
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    ctl = str(PG_BIN / "pg_ctl")
    subprocess.run(
        [ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
        check=True, capture_output=True, cwd=root, **owner,
    )  # fmt: skip
    try:
        _wait_port(port, "PostgreSQL")
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True, cwd=root, **owner,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def private_redis(workdir: Path | None = None) -> Iterator[str]:
    """A redis-server of our own whose default user needs a generated password
    (``requirepass``); yields its admin URL. ACL users can be added through it."""
    root = Path(tempfile.mkdtemp(prefix="openmwaa-redis-", dir=workdir))
    password, port = secrets.token_hex(16), free_port()
    config = root / "redis.conf"
    # In a file, not on the command line: ps would show the password to every user.
    config.write_text(
        f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {root}\nrequirepass {password}\n'
    )
    config.chmod(0o600)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL)
    try:
        _wait_port(port, "redis-server")
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(root, ignore_errors=True)


class _Shared:
    """One running server per test run, however many modules' session fixtures use it
    (pytest makes one session fixture per module that imports it): counted references."""

    def __init__(self, start: Callable[[], contextlib.AbstractContextManager[str]]) -> None:
        self.start, self.users = start, 0
        self.stack: contextlib.ExitStack | None = None
        self.url = ""

    def acquire(self) -> str:
        if self.stack is None:
            self.stack = contextlib.ExitStack()
            self.url = self.stack.enter_context(self.start())
        self.users += 1
        return self.url

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.stack is not None:
            self.stack.close()
            self.stack = None


_POSTGRES = _Shared(private_postgres)
_REDIS = _Shared(private_redis)


@pytest.fixture(scope="session")
def private_postgres_url() -> Iterator[str]:
    """Admin URL of the test run's own password-protected PostgreSQL cluster."""
    yield _POSTGRES.acquire()
    _POSTGRES.release()


@pytest.fixture(scope="session")
def private_redis_url() -> Iterator[str]:
    """Admin URL (``redis://:PW@127.0.0.1:PORT/0``) of the test run's own Redis."""
    yield _REDIS.acquire()
    _REDIS.release()
