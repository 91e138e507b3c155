"""One server per data dir, and per store: taken before the server touches anything.

Two servers on one data dir would adopt each other's Airflow processes and then stop
them; two on one PostgreSQL store (on different hosts) would reconcile the same
environments twice. So ``openmwaa serve`` first takes

* an exclusive ``flock`` on ``<data-dir>/server.lock`` (released by the kernel when the
  process dies, however it dies; the file names the holder's pid and host), and
* when the store is PostgreSQL, a session advisory lock held by a connection of its own
  for the life of the process (its ``application_name`` names the holder).

A second server fails at once with :class:`AlreadyRunning`, naming the holder. The
store lock's connection is checked every few seconds: a lost session (a PostgreSQL restart)
takes the lock again, and if another server took it meanwhile this one stops (``on_lost``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openmwaa.core.loops import PeriodicLoop

log = logging.getLogger(__name__)

LOCK_FILE = "server.lock"
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"openmwaa serve").digest()[:8], signed=True)
"""The advisory lock's key: the same for every openmwaa server on a database."""
_APPLICATION = "openmwaa serve"
WATCH_INTERVAL = 5.0
"""Seconds between checks that the store lock's session is alive."""


class AlreadyRunning(Exception):
    """Another server holds the data dir or the store; ``str()`` names it."""


def _holder_text(info: dict[str, Any]) -> str:
    pid = info.get("pid", "?")
    host = info.get("host") or "?"
    return f"pid {pid} on host {host}"


class InstanceLock:
    """The locks of one running server; :meth:`release` (or process exit) frees them."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        *,
        on_lost: Callable[[], None] | None = None,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._database_url = database_url
        self._fd: int | None = None
        self._connection: Any = None
        self._on_lost = on_lost
        self._watch = PeriodicLoop(
            "store-lock", self._check_store, watch_interval, max_backoff=watch_interval
        )

    def acquire(self) -> None:
        """Take both locks, or raise AlreadyRunning without having changed anything."""
        self._lock_file()
        try:
            if self._database_url and _is_postgres(self._database_url):
                self._lock_store(self._database_url)
                self._watch.start()
        except BaseException:
            self.release()
            raise

    def _lock_file(self) -> None:
        # O_CLOEXEC (Python's default): no child (Airflow, uv) keeps the lock alive.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise AlreadyRunning(
                f"another openmwaa server ({_holder_text(holder)}) is using {self.data_dir} "
                f"(it holds {self.path}); stop it first, or use another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)
        os.fsync(fd)
        self._fd = fd

    def _lock_store(self, url: str) -> None:
        import psycopg

        me = f"{_APPLICATION} pid {os.getpid()} on host {socket.gethostname()}"[:63]
        conn = psycopg.connect(
            _libpq_url(url),
            autocommit=True,
            application_name=me,
            connect_timeout=10,
            # A holder whose host vanished loses its session (and the lock) within minutes.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()
            if not row or not row[0]:
                holder = _store_holder(conn)
                raise AlreadyRunning(
                    f"another openmwaa server ({holder}) is using the store "
                    f"{_safe_url(url)}; stop it first, or use another --database-url"
                )
        except BaseException:
            conn.close()
            raise
        self._connection = conn

    def _check_store(self) -> None:
        """The session holding the lock is alive; else take the lock again, or, when another
        server has it now, stop this one (two would reconcile the same environments)."""
        import psycopg

        url = self._database_url
        if self._connection is not None:
            try:
                self._connection.execute("SELECT 1")
                return
            except psycopg.Error as exc:
                log.warning("the store lock's session was lost (%s): taking the lock again", exc)
                with contextlib.suppress(Exception):
                    self._connection.close()
                self._connection = None
        if url is None or self._watch.stopping:
            return
        try:
            self._lock_store(url)  # a store that is down: raises, retried at the next pass
        except AlreadyRunning as exc:
            log.error("%s: this server stops", exc)
            self._watch.stop(timeout=0)
            if self._on_lost is not None:
                self._on_lost()
            return
        log.info("the store lock is held again")

    def release(self) -> None:
        self._watch.stop(timeout=2)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
        if self._fd is not None:
            os.close(self._fd)  # the file stays: removing it would race a starting server
            self._fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    """What the holder wrote in the lock file (it may be mid-write: then nothing)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store_holder(conn: Any) -> str:
    """The holding session's application_name (``openmwaa serve pid N on host H``), address."""
    row = conn.execute(
        "SELECT a.application_name, host(a.client_addr) FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.classid = ((%s::bigint >> 32) & 4294967295)::oid "
        "AND l.objid = (%s::bigint & 4294967295)::oid LIMIT 1",
        (ADVISORY_KEY, ADVISORY_KEY),
    ).fetchone()
    if not row:
        return "a session that has just ended"
    name, address = row
    text = str(name or "unknown").removeprefix(_APPLICATION).strip()
    return f"{text}, connected from {address}" if address else text


def _is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def _libpq_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
