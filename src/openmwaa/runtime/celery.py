"""Production mode: CeleryExecutor on a shared broker and PostgreSQL.

Every environment has its own broker queue (the name MWAA shows as
``CeleryExecutorQueue``) and, on Redis, its own key prefix, so environments
sharing one broker never take each other's tasks. Workers are ``airflow celery
worker`` processes; what they are doing is read from the environment's own
metadata database and process tree, never guessed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from openmwaa.runtime.base import RuntimeFailure

WORKER_PREFIX = "worker-"
"""Supervised worker components are named ``worker-1``, ``worker-2``, ..."""
_DEFAULT_PORTS = {"redis": 6379, "rediss": 6380, "amqp": 5672, "amqps": 5671, "pyamqp": 5672}


def broker_address(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a broker URL; ValueError for one Celery cannot use."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(
            f"the broker URL must start with redis://, rediss:// or amqp:// (got {scheme}://)"
        )
    return scheme, parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS[scheme]


def redacted(url: str) -> str:
    """A URL safe to show: scheme, host and port, never the password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def check_broker(url: str, timeout: float = 3.0) -> None:
    """Raise RuntimeFailure BROKER_UNREACHABLE unless the broker answers its protocol."""
    try:
        scheme, host, port = broker_address(url)
    except ValueError as exc:
        raise RuntimeFailure("BROKER_UNREACHABLE", str(exc)) from exc
    # A Redis PING or an AMQP protocol header: a listening port that is not the broker fails.
    hello = b"PING\r\n" if scheme.startswith("redis") else b"AMQP\x00\x00\x09\x01"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            if scheme.endswith("s"):
                return  # TLS brokers: reachable is all that is checked here
            sock.sendall(hello)
            answer = sock.recv(16)
    except OSError as exc:
        raise RuntimeFailure(
            "BROKER_UNREACHABLE",
            f"the Celery broker {redacted(url)} is unreachable ({exc.strerror or exc}); "
            "start it or fix the broker URL",
        ) from exc
    if scheme.startswith("redis"):
        ok = answer.startswith((b"+PONG", b"-NOAUTH"))
    else:
        ok = answer[:1] == b"\x01"  # a method frame: Connection.Start
    if not ok:
        raise RuntimeFailure(
            "BROKER_UNREACHABLE",
            f"{redacted(url)} answered, but not as a {scheme} broker",
        )


def celery_environment(
    *, broker_url: str, result_backend: str, queue: str, tasks_per_worker: int
) -> dict[str, str]:
    """The Airflow settings of a CeleryExecutor environment (they win over users' options)."""
    env = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(tasks_per_worker),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        # One task per worker process at a time: a worker that drains keeps nothing queued.
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    }
    if broker_address(broker_url)[0].startswith("redis"):
        # Every key of this environment under its own prefix (queues, unacked, bindings).
        env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] = f"{queue}:"
    return env


_PURGE = (
    "import os, redis\n"
    "r = redis.from_url(os.environ['BROKER_URL'])\n"
    "keys = list(r.scan_iter(match=os.environ['PREFIX'] + '*', count=1000))\n"
    "print(r.delete(*keys) if keys else 0)\n"
)


def purge_redis_keys(python: Path, broker_url: str, prefix: str) -> int:
    """Delete a deleted environment's keys (its queue, bindings, unacked tasks) from Redis.

    Run with the environment's own Airflow install, which has the Redis client the
    control plane does not need otherwise; the URL goes by environment, never argv.
    """
    if not broker_address(broker_url)[0].startswith("redis"):
        return 0  # RabbitMQ: the queue is the environment's own; nothing is left over
    proc = subprocess.run(
        [str(python), "-c", _PURGE],
        env={**os.environ, "BROKER_URL": broker_url, "PREFIX": prefix},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeFailure("BROKER_FAILED", proc.stderr.strip().splitlines()[-1][:300])
    return int(proc.stdout.strip() or 0)


def worker_argv(airflow: str, queue: str, hostname: str, concurrency: int) -> list[str]:
    return [
        airflow,
        "celery",
        "worker",
        "--queues",
        queue,
        "--concurrency",
        str(concurrency),
        "--celery-hostname",
        hostname,
        # No chatter with other environments' workers on the same broker.
        "--without-mingle",
        "--without-gossip",
    ]


def worker_index(component: str) -> int | None:
    if not component.startswith(WORKER_PREFIX):
        return None
    with contextlib.suppress(ValueError):
        return int(component[len(WORKER_PREFIX) :])
    return None


def running_tasks(worker: psutil.Process) -> int:
    """Tasks a Celery worker is running now.

    A worker's pool processes are its children; each task an Airflow 3 worker runs
    is a process its pool process starts (the task supervisor's child), so a pool
    process with children is a busy slot. Process trees are the truth here: the
    worker's own view (``celery inspect``) would need a broker round trip per worker.
    """
    count = 0
    with contextlib.suppress(psutil.Error):
        for child in worker.children():
            with contextlib.suppress(psutil.Error):
                if child.children() and "serve" not in " ".join(child.cmdline()):
                    count += 1
    return count


LOAD_SQL = (
    "SELECT state, count(*) FROM task_instance WHERE state IN ('queued', 'running') GROUP BY state"
)


def task_counts(sql_alchemy_conn: str) -> tuple[int, int]:
    """(queued, running) task instances in the environment's PostgreSQL metadata DB."""
    import psycopg

    conninfo = sql_alchemy_conn.replace("postgresql+psycopg2://", "postgresql://", 1)
    with psycopg.connect(conninfo, connect_timeout=3, autocommit=True) as conn:
        rows: dict[str, int] = dict(conn.execute(LOAD_SQL).fetchall())
    return int(rows.get("queued", 0)), int(rows.get("running", 0))
