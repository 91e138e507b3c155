"""What the hostile-tenant test (test_hostile_tenant.py) puts into environments A and B.

A's DAG ``hostile`` has one task per attack. A probe task succeeds when every attempt of
its attack was denied (PermissionError, EPERM, NOPERM, an authentication failure, 403)
and fails when one of them worked, or when an attempt ended neither way (a missing file,
a refused connection): only a denial counts. Two tasks are judged by the test instead:
``memory_hog`` must be killed by the kernel (SIGKILL, so Airflow marks it failed) before
it holds its target, and ``fork_bomb`` must see fork() fail with EAGAIN before its bound,
hold its children a while (so B runs beside a full pids limit), then reap them.

The test fills in what each attack aims at (paths, pids, URLs, a token minted for B)
as root, after resolving symlinks: A's user cannot traverse pytest's folders, so every
path must be the real one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

EMBEDDED = "embedded"
REDIS = "postgres_redis"
RABBITMQ = "postgres_rabbitmq"


@dataclass(frozen=True)
class Attack:
    """One task of the hostile DAG: what it tries, where, and its state once closed."""

    task_id: str
    description: str
    modes: frozenset[str]
    expected: str = "success"
    """``success``: every attempt was denied; ``failed``: killed inside A."""


_ALL = frozenset({EMBEDDED, REDIS})
ATTACKS = {
    a.task_id: a
    for a in (
        Attack("read_admin_key", "reading the platform's admin key (admin-key.json)", _ALL),
        Attack("read_store", "reading the store (every access key's secret)", _ALL),
        Attack("read_b_secrets", "reading B's secrets.json", _ALL),
        Attack("read_b_metadb", "reading B's SQLite metadata DB", frozenset({EMBEDDED})),
        Attack("read_b_logs", "reading B's component logs", _ALL),
        Attack("read_b_environ", "reading /proc/<pid>/environ of B's processes", _ALL),
        Attack("read_server_environ", "reading /proc/<pid>/environ of the server", _ALL),
        Attack("write_b_dags", "writing into B's DAG folder and DAG files", _ALL),
        Attack("write_install", "writing into the Airflow install", _ALL),
        Attack("signal_b", "signalling B's processes", _ALL),
        Attack("signal_server", "signalling (killing) the server", _ALL),
        Attack("escape_cgroup", "moving itself out of A's cgroups", _ALL),
        Attack("raise_limits", "raising A's own cgroup limits", _ALL),
        Attack(
            "connect_b_db",
            "connecting to B's database with A's credentials (or none)",
            frozenset({REDIS}),
        ),
        Attack(
            "redis_b_keys",
            "reading, deleting or subscribing to B's Redis keys and channels",
            frozenset({REDIS}),
        ),
        Attack(
            "relay_stolen_token",
            "calling B's execution relay with a token stolen from B",
            frozenset({REDIS}),
        ),
        Attack(
            "amqp_b_vhost",
            "opening B's (or the default) RabbitMQ virtual host with A's account",
            frozenset({RABBITMQ}),
        ),
        Attack("memory_hog", "allocating past A's memory limit", _ALL, expected="failed"),
        Attack("fork_bomb", "forking without bound (a fork bomb)", _ALL),
    )
}
LAST = ("memory_hog", "fork_bomb")
"""Run after every probe, in this order (they fill A's memory and pids limits)."""


def attacks_for(mode: str) -> list[str]:
    return [a.task_id for a in ATTACKS.values() if mode in a.modes]


def hostile_dag(targets: dict[str, Any]) -> str:
    """The DAG file of A: one task per key of ``targets`` (task id -> its parameters)."""
    return _HOSTILE_DAG.replace("__TARGETS__", repr(json.dumps(targets)))


_HOSTILE_DAG = r'''
"""A hostile tenant: each task tries one attack and fails if it worked."""
import errno
import json
import os
import shutil
import signal
import socket
import time
import uuid

import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

T = json.loads(__TARGETS__)
DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


class AttackSucceeded(AssertionError):
    """The attack (or one attempt of it) was not denied."""


class Denied(Exception):
    """A refusal that is not an OSError (NOPERM, 403, an authentication failure)."""


def say(line):
    print(line, flush=True)


def os_denied(exc):
    return isinstance(exc, OSError) and exc.errno in DENIED_ERRNOS


def attempt(what, action, denied=os_denied):
    """Run one attempt; None when denied, else a line saying what happened."""
    try:
        result = action()
    except Exception as exc:  # judged below
        if isinstance(exc, Denied) or denied(exc):
            say(f"DENIED {what}: {type(exc).__name__}: {exc}")
            return None
        say(f"UNCLEAR {what}: {type(exc).__name__}: {exc}")
        return f"UNCLEAR {what}: neither done nor denied ({type(exc).__name__}: {exc})"
    say(f"SUCCEEDED {what}: {result}")
    return f"SUCCEEDED {what}: {result}"


def verdict(results):
    bad = [r for r in results if r]
    if bad:
        raise AttackSucceeded(" | ".join(bad))
    say("ALL DENIED")


def _read(path):
    with open(path, "rb") as f:
        return f"read {len(f.read(65536))} bytes"


def read_paths(p):
    verdict([attempt(f"read {label} ({path})", lambda path=path: _read(path))
             for label, path in p.items()])


def _create_in(folder):
    path = os.path.join(folder, f".hostile-{uuid.uuid4().hex[:8]}.py")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    os.unlink(path)
    return f"created (and removed) {path}"


def _open_for_writing(path):
    with open(path, "r+b"):
        pass  # nothing written: being able to is the attack
    return f"opened {path} for writing"


def write_paths(p):
    results = [attempt(f"create a file in {d}", lambda d=d: _create_in(d)) for d in p["dirs"]]
    results += [attempt(f"open {f} for writing", lambda f=f: _open_for_writing(f))
                for f in p["files"]]
    verdict(results)


def _signal(pid):
    os.kill(pid, 0)  # the permission check of every signal, without sending one
    return f"may signal pid {pid}"


def signal_pids(p):
    verdict([attempt(f"signal {label} (pid {pid})", lambda pid=pid: _signal(pid),
                     denied=lambda e: isinstance(e, PermissionError))
             for label, pid in p.items()])


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return f"wrote {text.strip()!r} to {path}"


def escape_cgroup(p):
    results = []
    for controller in ("memory", "pids", "cpu"):
        procs = f"/sys/fs/cgroup/{controller}/cgroup.procs"
        if os.path.exists(procs):
            results.append(attempt(f"join the root {controller} cgroup",
                                   lambda procs=procs: _write(procs, f"{os.getpid()}\n")))
    verdict(results)


def _own_cgroup(controller):
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if controller in names.split(",") and path.strip("/"):
                return f"/sys/fs/cgroup/{controller}{path.rstrip('/')}"
    raise LookupError(f"no {controller} cgroup of its own in /proc/self/cgroup")


def raise_limits(p):
    results = []
    for controller, name, value in (("memory", "memory.limit_in_bytes", "-1"),
                                    ("pids", "pids.max", "max")):
        def action(controller=controller, name=name, value=value):
            return _write(f"{_own_cgroup(controller)}/{name}", value + "\n")
        results.append(attempt(f"set its own {name} to {value}", action))
    verdict(results)


def connect_postgres(p):
    import psycopg2

    def denied(exc):
        text = str(exc)
        return isinstance(exc, psycopg2.OperationalError) and any(
            s in text for s in ("permission denied for database", "authentication failed",
                                "no pg_hba.conf entry", "no password supplied"))

    def connect(dsn):
        conn = psycopg2.connect(dsn, connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_class")
                return f"connected, {cur.fetchone()[0]} relations visible"
        finally:
            conn.close()

    verdict([attempt(label, lambda dsn=dsn: connect(dsn), denied=denied)
             for label, dsn in p.items()])


class RespError(Exception):
    pass


def resp_call(url, *command):
    """One Redis command on a fresh connection logged in with the URL's credentials."""
    from urllib.parse import unquote, urlsplit

    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port or 6379), timeout=10)
    reader = sock.makefile("rb")

    def send(*args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            raw = a.encode()
            out += b"$%d\r\n%s\r\n" % (len(raw), raw)
        sock.sendall(out)

    def read():
        line = reader.readline()
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"-":
            raise RespError(rest.decode())
        if kind in (b"+", b":"):
            return rest.decode()
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else reader.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [read() for _ in range(n)]
        raise RespError(f"unexpected reply {line[:40]!r}")

    try:
        if u.password:
            user = [unquote(u.username)] if u.username else []
            send("AUTH", *user, unquote(u.password))
            read()
        send(*command)
        reply = read()
        size = len(reply) if isinstance(reply, (list, bytes)) else reply
        return f"{command[0]} answered ({type(reply).__name__} {size!r:.40})"
    finally:
        reader.close()
        sock.close()


def redis_denied(exc):
    # A script naming another tenant's key gets "ERR ... can't access ... keys".
    return isinstance(exc, RespError) and (
        str(exc).split(" ", 1)[0] in ("NOPERM", "NOAUTH", "WRONGPASS")
        or "can't access" in str(exc))


def redis_keys(p):
    results = []
    for label, url, command in p["attempts"]:
        results.append(attempt(f"{label}: {' '.join(command)[:120]}",
                               lambda url=url, command=command: resp_call(url, *command),
                               denied=redis_denied))
    verdict(results)


def relay(p):
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def denied(exc):
        return isinstance(exc, urllib.error.HTTPError) and exc.code in (401, 403, 404)

    def call(url):
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {p['token']}"})
        with opener.open(request, timeout=30) as response:
            return f"HTTP {response.status}, {len(response.read())} bytes of B's variable"

    verdict([attempt(label, lambda url=url: call(url), denied=denied)
             for label, url in p["urls"].items()])


def amqp_vhosts(p):
    import amqp

    def denied(exc):
        return isinstance(exc, amqp.exceptions.AccessRefused) or (
            isinstance(exc, amqp.exceptions.NotAllowed) and "refused" in str(exc))

    def connect(vhost):
        conn = amqp.Connection(host=p["host"], userid=p["user"], password=p["password"],
                               virtual_host=vhost, connect_timeout=10)
        conn.connect()
        conn.close()
        return f"opened virtual host {vhost!r} as {p['user']}"

    verdict([attempt(f"open virtual host {v!r} with A's account", lambda v=v: connect(v),
                     denied=denied) for v in p["vhosts"]])


def memory_hog(p):
    """Touch every page of ``step_mib`` chunks until ``target_mib`` are held."""
    held, chunks = 0, []
    while held < p["target_mib"]:
        chunk = bytearray(p["step_mib"] << 20)
        chunk[::4096] = b"\x01" * len(range(0, len(chunk), 4096))
        chunks.append(chunk)
        held += p["step_mib"]
        say(f"HOG holds {held} MiB")
    say(f"HOG reached its target of {held} MiB: nothing stopped it")


def fork_bomb(p):
    sleep = shutil.which("sleep") or "/bin/sleep"
    children, failure = [], None
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        while len(children) < p["bound"]:
            try:
                pid = os.fork()
            except OSError as exc:
                failure = exc
                break
            if pid == 0:  # the child: no Python left running, only a marked sleep
                try:
                    for fd in (0, 1, 2):
                        os.dup2(devnull, fd)
                    os.execv(sleep, [p["mark"], "900"])
                finally:
                    os._exit(127)
            children.append(pid)
        say(f"BOMB forked {len(children)} processes, then fork() gave {failure!r}")
        if failure is not None and failure.errno == errno.EAGAIN:
            say(f"BOMB holds its {len(children)} children for {p['hold']} s")
            time.sleep(p["hold"])
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os.close(devnull)
        say(f"BOMB reaped {len(children)} children")
    if failure is None:
        raise AttackSucceeded(f"SUCCEEDED forked {len(children)} processes without a limit")
    if failure.errno != errno.EAGAIN:
        raise AttackSucceeded(f"UNCLEAR fork() failed with {failure!r}, not EAGAIN")


RUN = {
    "read_admin_key": read_paths,
    "read_store": read_paths,
    "read_b_secrets": read_paths,
    "read_b_metadb": read_paths,
    "read_b_logs": read_paths,
    "read_b_environ": read_paths,
    "read_server_environ": read_paths,
    "write_b_dags": write_paths,
    "write_install": write_paths,
    "signal_b": signal_pids,
    "signal_server": signal_pids,
    "escape_cgroup": escape_cgroup,
    "raise_limits": raise_limits,
    "connect_b_db": connect_postgres,
    "redis_b_keys": redis_keys,
    "relay_stolen_token": relay,
    "amqp_b_vhost": amqp_vhosts,
    "memory_hog": memory_hog,
    "fork_bomb": fork_bomb,
}


def task_callable(name):
    def run():
        RUN[name](T[name])

    run.__name__ = name
    return run


with DAG("hostile", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False,
         default_args={"retries": 0}):
    tasks = {name: PythonOperator(task_id=name, python_callable=task_callable(name),
                                  trigger_rule="all_done" if name in __LAST__ else "all_success")
             for name in T}
    probes = [t for name, t in tasks.items() if name not in __LAST__]
    previous = probes
    for name in __LAST__:
        if name in tasks:
            previous >> tasks[name]
            previous = [tasks[name]]
'''.replace("__LAST__", repr(LAST))


STEADY_DAG = """
import subprocess
import time

import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def step():
    # B's own work: it forks and sleeps like any task, while A attacks.
    for _ in range(5):
        subprocess.run(["true"], check=True)
    time.sleep(3)


with DAG("steady", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False,
         default_args={"retries": 0}):
    first = PythonOperator(task_id="first", python_callable=step)
    first >> [PythonOperator(task_id=f"then{i}", python_callable=step) for i in range(3)]
"""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_task_token(secret: str, issuer: str | None, audience: str, valid_for: int = 900) -> str:
    """A task token as B's scheduler issues them (HS512 with B's JWT secret), for a task of
    B that does not exist: what a thief would lift from B's broker messages."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "jti": uuid.uuid4().hex,
        "sub": str(uuid.uuid4()),
        "aud": audience,
        "nbf": now,
        "iat": now,
        "exp": now + valid_for,
        "scope": "execution",
    }
    if issuer:
        claims["iss"] = issuer
    header = {"alg": "HS512", "typ": "JWT", "kid": "openmwaa-test"}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing.encode(), hashlib.sha512).digest()
    return f"{signing}.{_b64(signature)}"


def _number(found: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = found.get(name) if isinstance(found, dict) else getattr(found, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def class_limits(environment_class: str, celery: bool) -> tuple[int | None, int | None]:
    """(memory bytes, pids) an environment of the class gets, when the tenancy module that
    sets them exists (None for what it does not say)."""
    try:
        from openmwaa.runtime.tenancy import limits  # type: ignore[attr-defined]
    except ImportError:
        return None, None
    found = limits.limits_for(environment_class, max_workers=1, celery=celery)
    memory = _number(found, ("memory", "memory_bytes", "memory_limit", "memory_max", "mem"))
    if memory is not None and memory < 1 << 20:  # a count of MiB, not bytes
        memory <<= 20
    pids = _number(found, ("pids", "pids_max", "pids_limit", "max_pids", "tasks"))
    return memory, pids


def log_events(text: str) -> list[str]:
    """The messages of an Airflow 3 task log (JSON lines; other lines as they are)."""
    events = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "event" in record:
            extra = {k: v for k, v in record.items() if k in ("signal_name", "exit_code", "error")}
            events.append(f"{record['event']}{' ' + json.dumps(extra) if extra else ''}")
        elif line.strip():
            events.append(line)
    return events
