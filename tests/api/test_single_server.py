"""One server per data dir and per store: a second ``openmwaa serve`` exits at once, naming
the holder, and leaves the first one's environments alone (test backend; seconds)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from live_server import (
    REQUIRED,
    Server,
    drop_postgres_database,
    postgres_database,
    wait_for,
    wait_status,
)

from openmwaa.instance import ADVISORY_KEY


@pytest.fixture
def first(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", ["--backend", "test"])
    srv.start()
    yield srv
    srv.stop()


def test_second_server_on_the_data_dir_exits_naming_the_holder(first: Server) -> None:
    mwaa = first.client()
    mwaa.create_environment(Name="held", **REQUIRED)
    wait_status(mwaa, "held", {"AVAILABLE"})
    assert first.process is not None

    # The same data dir and port (the usual mistake), then another port.
    for port in (first.port, first.port + 1):
        second = Server(first.data_dir, ["--backend", "test"], port=port)
        started = time.monotonic()
        done = second.run_once(timeout=30)
        assert time.monotonic() - started < 15
        assert done.returncode != 0
        message = " ".join(done.stdout.split() + done.stderr.split())
        assert f"pid {first.process.pid} on host {socket.gethostname()}" in message, message
        assert str(first.data_dir) in message

    assert first.process.poll() is None
    assert mwaa.get_environment(Name="held")["Environment"]["Status"] == "AVAILABLE"
    mwaa.delete_environment(Name="held")


def test_lock_is_released_when_the_holder_is_killed(first: Server) -> None:
    """The kernel drops a dead holder's flock: a SIGKILLed server never blocks the next."""
    assert first.process is not None
    first.process.kill()
    first.process.wait()
    first.process = None
    first.start()


@pytest.mark.services
def test_second_server_on_the_postgres_store_exits_naming_the_holder(tmp_path: Path) -> None:
    """Different data dirs (as two hosts would have), one PostgreSQL store."""
    url = postgres_database()
    store = ["--backend", "test", "--database-url", url]
    one = Server(tmp_path / "one", store)
    two = Server(tmp_path / "two", store)
    try:
        one.start()
        assert one.process is not None
        started = time.monotonic()
        done = two.run_once(timeout=30)
        assert time.monotonic() - started < 15
        assert done.returncode != 0
        message = " ".join(done.stdout.split() + done.stderr.split())
        assert f"pid {one.process.pid} on host {socket.gethostname()}" in message, message
        assert "store" in message and "openmwaa_test_" in message
        assert not (tmp_path / "two" / "admin-key.json").exists(), "touched nothing"

        one.stop()  # the lock goes with its session
        two.start()
    finally:
        one.stop()
        two.stop()
        drop_postgres_database(url)


@pytest.mark.services
def test_a_server_whose_store_lock_was_taken_stops(tmp_path: Path) -> None:
    """The store lock's session dies (a PostgreSQL restart, a network cut) and another
    server takes the lock meanwhile: this one stops instead of reconciling beside it; and
    a session lost with nobody waiting is simply taken again."""
    url = postgres_database()
    srv = Server(tmp_path / "one", ["--backend", "test", "--database-url", url])
    try:
        srv.start()
        assert srv.process is not None
        mine = f"openmwaa serve pid {srv.process.pid} %"
        with psycopg.connect(url, autocommit=True) as admin:
            session = "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s"
            holder = admin.execute(session, (mine,)).fetchone()
            assert holder, "the lock is held by a session of its own, named after the server"
            admin.execute("SELECT pg_terminate_backend(%s)", holder)
            wait_for(
                lambda: (row := admin.execute(session, (mine,)).fetchone()) and row != holder,
                30,
                "the lock to be taken again",
            )
            assert srv.process.poll() is None

            holder = admin.execute(session, (mine,)).fetchone()
            with psycopg.connect(url, autocommit=True) as other:
                admin.execute("SELECT pg_terminate_backend(%s)", holder)
                key = "SELECT pg_try_advisory_lock(%s)"
                wait_for(lambda: other.execute(key, (ADVISORY_KEY,)).fetchone()[0], 10, "the lock")
                srv.process.wait(60)
        assert "this server stops" in " ".join(srv.log.read_text().split())
        srv.process = None
    finally:
        srv.stop()
        drop_postgres_database(url)
