"""Production mode: CeleryExecutor on a shared broker and PostgreSQL.

Every environment has its own broker queue (the name MWAA shows as
``CeleryExecutorQueue``) and, on Redis, its own key prefix, so environments
sharing one broker never take each other's tasks; its own broker account
(``runtime/brokers``) keeps it from reading theirs. Workers are ``airflow celery
worker`` processes; what they are doing is read from the environment's own
metadata database and process tree, never guessed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from urllib.parse import unquote, urlsplit

import psutil

from openmwaa.runtime.base import RuntimeFailure

CREDENTIALS_REFUSED = "BROKER_CREDENTIALS_REFUSED"
"""RuntimeFailure code of a broker that answers but refuses the URL's account (or its
RabbitMQ virtual host): what an environment's account that went missing looks like."""
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
    """Raise RuntimeFailure BROKER_UNREACHABLE unless the broker answers its protocol and
    accepts the URL's credentials (what a worker with this URL would be told).

    Redis: AUTH (when the URL has a password) and PING; AMQP: the protocol header and a
    PLAIN login up to Connection.Tune. A listening port that is not the broker fails too.
    TLS brokers (rediss://, amqps://) are only checked to accept connections.
    """
    try:
        scheme, host, port = broker_address(url)
    except ValueError as exc:
        raise RuntimeFailure("BROKER_UNREACHABLE", str(exc)) from exc
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            if scheme in ("rediss", "amqps"):
                return  # TLS brokers: reachable is all that is checked here
            if scheme.startswith("redis"):
                problem = _redis_login(sock, url)
            else:
                problem = _amqp_login(sock, url)
    except OSError as exc:
        raise RuntimeFailure(
            "BROKER_UNREACHABLE",
            f"the Celery broker {redacted(url)} is unreachable ({exc.strerror or exc}); "
            "start it or fix the broker URL",
        ) from exc
    if problem:
        refused = problem.startswith(("refused the URL's", "needs a password"))
        code = CREDENTIALS_REFUSED if refused else "BROKER_UNREACHABLE"
        raise RuntimeFailure(code, f"the Celery broker {redacted(url)} {problem}")


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _redis_login(sock: socket.socket, url: str) -> str | None:
    """None when the Redis server takes the URL's credentials; else what is wrong."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    request = b""
    if password:
        request += _resp("AUTH", username, password) if username else _resp("AUTH", password)
    sock.sendall(request + b"PING\r\n")
    reader = sock.makefile("rb")
    if password:
        answer = reader.readline(512)
        if not answer.startswith(b"+OK"):
            if not answer.startswith(b"-"):
                return "answered, but not as a redis broker"
            reply = answer[1:].decode(errors="replace").strip()[:200]
            return f"refused the URL's credentials ({reply}); fix the password in the broker URL"
    answer = reader.readline(512)
    if answer.startswith(b"+PONG"):
        return None
    if answer.startswith(b"-NOAUTH"):
        return "needs a password, and the broker URL has none"
    if answer.startswith(b"-"):
        return f"refused PING ({answer[1:].decode(errors='replace').strip()[:200]})"
    return "answered, but not as a redis broker"


def _amqp_frame(sock: socket.socket) -> tuple[int, int, bytes] | None:
    """(class id, method id, arguments) of the next method frame; None if the socket closed."""
    reader = sock.makefile("rb")
    header = reader.read(7)
    if len(header) < 7:
        return None
    kind, _channel, size = struct.unpack(">BHI", header)
    if kind != 1 or size > 1 << 20:
        return (-1, -1, b"")
    payload = reader.read(size + 1)
    if len(payload) < size + 1 or size < 4 or payload[-1:] != b"\xce":
        return (-1, -1, b"")
    class_id, method_id = struct.unpack(">HH", payload[:4])
    return class_id, method_id, payload[4:-1]


def _amqp_login(sock: socket.socket, url: str) -> str | None:
    """None when an AMQP 0-9-1 broker takes the URL's credentials (default guest) and
    opens its virtual host (default ``/``) to them."""
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    start = _amqp_frame(sock)
    if start is None or start[:2] != (10, 10):  # Connection.Start
        return "answered, but not as an amqp broker"
    parts = urlsplit(url)
    user = unquote(parts.username or "guest").encode()
    password = unquote(parts.password or "guest").encode()
    response = b"\x00" + user + b"\x00" + password
    args = (
        struct.pack(">HH", 10, 11)  # Connection.StartOk
        + struct.pack(">I", 0)  # client properties: none
        + b"\x05PLAIN"
        + struct.pack(">I", len(response))
        + response
        + b"\x05en_US"
    )
    try:
        sock.sendall(struct.pack(">BHI", 1, 0, len(args)) + args + b"\xce")
        answer = _amqp_frame(sock)
    except OSError:
        answer = None  # RabbitMQ closes the connection (or says nothing) on a failed login
    if answer is not None and answer[:2] == (10, 30):  # Connection.Tune: logged in
        return _amqp_open(sock, answer[2], unquote(parts.path[1:]) or "/")
    if answer is not None and answer[:2] == (10, 50) and len(answer[2]) >= 3:  # Close
        return (
            f"refused the URL's credentials ({_close_text(answer[2])}); fix them in the broker URL"
        )
    return "refused the URL's credentials; fix them in the broker URL"


def _close_text(args: bytes) -> str:
    """The reply text of a Connection.Close (reply code, then a short string)."""
    return args[3 : 3 + args[2]].decode(errors="replace")[:200] if len(args) >= 3 else ""


def _amqp_open(sock: socket.socket, tune: bytes, vhost: str) -> str | None:
    """After Tune: TuneOk and Connection.Open of the virtual host; None once it is open."""
    channel_max, frame_max = struct.unpack(">HI", tune[:6]) if len(tune) >= 6 else (0, 131072)
    tune_ok = struct.pack(">HHHIH", 10, 31, channel_max, frame_max, 0)
    name = vhost.encode()[:255]
    open_ = struct.pack(">HH", 10, 40) + bytes([len(name)]) + name + b"\x00\x00"
    try:
        for args in (tune_ok, open_):
            sock.sendall(struct.pack(">BHI", 1, 0, len(args)) + args + b"\xce")
        answer = _amqp_frame(sock)
    except OSError:
        answer = None
    if answer is not None and answer[:2] == (10, 41):  # Connection.OpenOk
        return None
    text = _close_text(answer[2]) if answer is not None and answer[:2] == (10, 50) else ""
    return f"refused the URL's credentials access to virtual host {vhost!r}" + (
        f" ({text})" if text else ""
    )


def redis_key_prefix(queue: str) -> str:
    """The prefix of every Redis key and channel of the environment whose queue it is."""
    return f"{queue}:"


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
        env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] = redis_key_prefix(queue)
    return env


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
