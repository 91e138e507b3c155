"""A hostile tenant: a DAG in environment A attacks the server and environment B.

Each attack is a task of A's DAG ``hostile`` (tests/e2e/hostile_support.py) that fails
when the attack worked; meanwhile B runs its own DAG to success twice (the second run
while A's fork bomb holds A's pids limit) and a thread keeps calling ListEnvironments.
Three servers, one after the other, each stopped before the next starts:

- embedded default (LocalExecutor, SQLite): files, /proc, signals, cgroups, memory, pids;
- production mode on a PostgreSQL and a Redis of the test's own, both with passwords
  (URLs given as variables, as an operator would, never on the command line): the same
  plus B's database, B's Redis keys and channels, and B's execution relay with a task
  token of B's (minted by the test with B's key, as if lifted from B's messages);
- production mode on RabbitMQ (needs its management API on 127.0.0.1:15672): broker
  attacks only.

``OPENMWAA_TEST_ISOLATION=off`` starts the servers with ``--isolation off`` (a check of the
test itself): then the attacks on files, processes, cgroups and limits succeed.

The data dir is world-searchable (0755, as ``mkdir /srv/openmwaa`` makes it), so the
server's files must be closed by their own modes, not by a closed folder above them.
Runs as root only (isolation needs it), as CI does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import psutil
import pytest
from hostile_support import (
    ATTACKS,
    EMBEDDED,
    RABBITMQ,
    REDIS,
    STEADY_DAG,
    attacks_for,
    class_limits,
    hostile_dag,
    log_events,
    mint_task_token,
)
from live_server import NETWORK, Server, belongs_under, wait_status
from private_services import private_postgres_url, private_redis_url
from sqlalchemy.engine import make_url

from openmwaa.runtime import bundles, celery, database
from openmwaa.runtime.brokers.redis_acl import RespClient
from openmwaa.runtime.orphans import read_pidfile, terminate

__all__ = ["private_postgres_url", "private_redis_url"]  # fixtures, used by name

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="the hostile-tenant test needs root: environments get OS users and cgroups",
)

BUCKET_A, BUCKET_B = "hostile-a", "hostile-b"
CLASS = "mw1.micro"
CREATE_TIMEOUT = 400
RUN_TIMEOUT = 420
FAST_RECOVERY = {
    # A task whose supervisor the OOM killer took is failed after ~30 s, not 5 minutes.
    "scheduler.task_instance_heartbeat_timeout": "30",
    "scheduler.task_instance_heartbeat_timeout_detection_interval": "5",
}
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
RABBITMQ_MANAGEMENT = "http://guest:guest@127.0.0.1:15672"
B_VARIABLE = ("b_private", "only-for-b")
HOG_STEP_MIB = 256
ISOLATION = os.environ.get("OPENMWAA_TEST_ISOLATION", "users")
"""``off`` runs the servers without isolation, to see the attacks succeed."""
BOMB_HOLD = 15


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@dataclass
class Outcome:
    """What one scenario saw, for the tests to judge after its server has stopped."""

    mode: str
    a: str
    b: str
    run_id: str = ""
    states: dict[str, str | None] = field(default_factory=dict)
    logs: dict[str, list[str]] = field(default_factory=dict)
    b_runs: dict[str, str] = field(default_factory=dict)
    b2_during_bomb: bool = False
    api_calls: int = 0
    api_errors: list[str] = field(default_factory=list)
    server_alive: bool = False
    a_status_after: str = ""
    leftovers: list[str] = field(default_factory=list)
    hog_target_mib: int = 0
    bomb_bound: int = 0
    relay_control: tuple[int, str] | None = None
    durations: dict[str, float | None] = field(default_factory=dict)
    a_statuses: list[str] = field(default_factory=list)
    a_diagnosis: str = ""
    """A's status changes, the server's lines about A and A's component logs' last lines."""
    timings: dict[str, float] = field(default_factory=dict)


class ApiWatch(threading.Thread):
    """Calls ListEnvironments every second; counts the calls and keeps every error. Also
    notes when A's status changes (for the reader of a failure)."""

    def __init__(self, server: Server, a: str) -> None:
        super().__init__(daemon=True)
        self.client = server.client(connect_timeout=5, read_timeout=15)
        self.a = a
        self.stopping = threading.Event()
        self.calls = 0
        self.errors: list[str] = []
        self.a_statuses: list[str] = []

    def run(self) -> None:
        begun = time.monotonic()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.client.list_environments()
                status = self.client.get_environment(Name=self.a)["Environment"]["Status"]
                if not self.a_statuses or not self.a_statuses[-1].endswith(f" {status}"):
                    self.a_statuses.append(f"+{started - begun:.0f}s {status}")
            except Exception as exc:  # every failure is what the test reports
                self.errors.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            self.calls += 1
            self.stopping.wait(max(0.0, 1 - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


# -- the server and its environments -------------------------------------------------------


def _data_dir(runtimes: Path) -> Path:
    """A world-searchable data dir (the server's files must be closed by their modes) with
    the run's Airflow install and the two buckets (closed: they are the test's)."""
    data_dir = Path(tempfile.mkdtemp(prefix="openmwaa-hostile-")).resolve()
    data_dir.chmod(0o755)
    (data_dir / "runtimes").symlink_to(runtimes)
    (data_dir / "buckets").mkdir(mode=0o700)
    for bucket in (BUCKET_A, BUCKET_B):
        (data_dir / "buckets" / bucket / "dags").mkdir(parents=True)
    (data_dir / "buckets" / BUCKET_B / "dags" / "steady.py").write_text(STEADY_DAG)
    return data_dir


def _start(data_dir: Path, variables: dict[str, str]) -> Server:
    """``openmwaa serve`` with ``variables`` in its environment only (not on its command
    line, which every user of the host can read)."""
    server = Server(data_dir, ["--isolation", ISOLATION])
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        server.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return server


def _cleanup(server: Server, data_dir: Path) -> None:
    """Stop the server, end what it left, remove its users, placements and data dir."""
    server.stop()
    terminate([p for p in psutil.process_iter() if belongs_under(p, data_dir)], grace=5)
    try:
        from openmwaa.runtime.tenancy import placement, users

        for name in users.users_of(str(data_dir)):
            users.remove_user_named(name)
        for folder in placement.placements_of(str(data_dir)):
            shutil.rmtree(folder, ignore_errors=True)
    except Exception as exc:  # the isolation API is young: say so, do not hide the test
        warnings.warn(f"hostile-tenant cleanup: {exc!r}", stacklevel=1)
    shutil.rmtree(data_dir, ignore_errors=True)


def _create(mwaa: Any, a: str, b: str) -> dict[str, dict[str, Any]]:
    for name, bucket in ((a, BUCKET_A), (b, BUCKET_B)):
        mwaa.create_environment(
            Name=name,
            ExecutionRoleArn="arn:aws:iam::123456789012:role/airflow",
            SourceBucketArn=f"arn:aws:s3:::{bucket}",
            DagS3Path="dags",
            NetworkConfiguration=NETWORK,
            EnvironmentClass=CLASS,
            AirflowConfigurationOptions=FAST_RECOVERY,
        )
    envs = {}
    for name in (a, b):
        env = wait_status(mwaa, name, {"AVAILABLE", "CREATE_FAILED"}, CREATE_TIMEOUT)
        assert env["Status"] == "AVAILABLE", f"{name}: {env.get('LastUpdate')}"
        envs[name] = env
    return envs


def _rest(mwaa: Any, name: str, method: str, path: str, **extra: Any) -> Any:
    return mwaa.invoke_rest_api(Name=name, Method=method, Path=path, **extra)["RestApiResponse"]


def _patiently(what: str, call: Any, timeout: float = 120) -> Any:
    """``call()``, asked again while the environment is busy or briefly UNAVAILABLE."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {exc!r}") from exc
            time.sleep(3)


def _wait_dag(mwaa: Any, name: str, dag: str, timeout: float = 120) -> None:
    def visible() -> bool:
        dags = _rest(mwaa, name, "GET", "/dags", QueryParameters={"limit": 100})["dags"]
        return dag in [d["dag_id"] for d in dags]

    deadline = time.monotonic() + timeout
    while not _patiently(f"the DAGs of {name}", visible):
        if time.monotonic() > deadline:
            raise AssertionError(f"DAG {dag} not visible in {name} after {timeout} s")
        time.sleep(1)


def _trigger(mwaa: Any, name: str, dag: str) -> str:
    run_id = f"r{uuid.uuid4().hex[:10]}"
    _patiently(
        f"unpausing {dag} in {name}",
        lambda: _rest(mwaa, name, "PATCH", f"/dags/{dag}", Body={"is_paused": False}),
    )
    body = {"dag_run_id": run_id, "logical_date": None}
    _patiently(
        f"triggering {dag} in {name}",
        lambda: _rest(mwaa, name, "POST", f"/dags/{dag}/dagRuns", Body=body),
    )
    return run_id


def _run_state(mwaa: Any, name: str, dag: str, run_id: str) -> str:
    return str(_rest(mwaa, name, "GET", f"/dags/{dag}/dagRuns/{run_id}")["state"])


def _task_instances(mwaa: Any, name: str, dag: str, run_id: str) -> dict[str, dict[str, Any]]:
    answer = _rest(mwaa, name, "GET", f"/dags/{dag}/dagRuns/{run_id}/taskInstances")
    return {t["task_id"]: t for t in answer["task_instances"]}


# -- what A's DAG aims at (read as root, real paths) ---------------------------------------


def _root(server: Server, name: str) -> Path:
    return (server.data_dir / "environments" / name).resolve()


def _pids(server: Server, name: str) -> dict[str, int]:
    """Component -> pid of the environment's live components (from its pid files)."""
    found = {}
    for pidfile in sorted((_root(server, name) / "run").glob("*.json")):
        entry = read_pidfile(pidfile)
        if entry is not None:
            found[pidfile.stem] = entry[0].pid
    assert "scheduler" in found, f"no live scheduler of {name}: {found}"
    return found


def _scheduler_env(server: Server, name: str) -> dict[str, str]:
    entry = read_pidfile(_root(server, name) / "run" / "scheduler.json")
    assert entry is not None, f"no live scheduler of {name}"
    return dict(entry[0].environ())


def _secrets(server: Server, name: str) -> dict[str, Any]:
    return dict(json.loads((_root(server, name) / "secrets.json").read_text()))


def _install(server: Server, name: str) -> Path:
    state = json.loads((_root(server, name) / "state.json").read_text())
    return Path(state["install"]).resolve()


def _existing(path: Path) -> str:
    real = path.resolve()
    assert real.exists(), f"the test aims at {real}, which does not exist"
    return str(real)


def _common_targets(server: Server, a: str, b: str, mode: str) -> dict[str, Any]:
    data_dir = server.data_dir.resolve()
    b_root = _root(server, b)
    b_dag = next(p for p in b_root.rglob("steady.py") if "__pycache__" not in p.parts)
    install = _install(server, a)
    site = next(install.glob("lib/python3*/site-packages"))
    b_pids = _pids(server, b)
    assert server.process is not None
    server_pid = server.process.pid
    memory, pids = class_limits(CLASS, celery=mode != EMBEDDED)
    hog_target = min((memory or 6 << 30) + (2 << 30), 16 << 30) >> 20
    targets: dict[str, Any] = {
        "read_admin_key": {"the admin key": _existing(data_dir / "admin-key.json")},
        "read_store": {"the store": _existing(data_dir / "openmwaa.db")},
        "read_b_secrets": {"B's secrets.json": _existing(b_root / "secrets.json")},
        "read_b_logs": {"B's scheduler log": _existing(b_root / "logs" / "scheduler.log")},
        "read_b_environ": {
            f"environ of B's {component}": f"/proc/{pid}/environ"
            for component, pid in b_pids.items()
        },
        "read_server_environ": {"environ of the server": f"/proc/{server_pid}/environ"},
        "write_b_dags": {"dirs": [_existing(b_dag.parent)], "files": [_existing(b_dag)]},
        "write_install": {
            "dirs": [_existing(install), _existing(install / "bin"), _existing(site / "airflow")],
            "files": [
                _existing(install / "bin" / "airflow"),
                _existing(site / "airflow" / "__init__.py"),
            ],
        },
        "signal_b": {f"B's {component}": pid for component, pid in b_pids.items()},
        "signal_server": {"the server": server_pid},
        "escape_cgroup": {},
        "raise_limits": {},
        "memory_hog": {"target_mib": hog_target, "step_mib": HOG_STEP_MIB},
        "fork_bomb": {
            "bound": (pids or 4096) + 512,
            "mark": f"openmwaa-hostile-fork-{uuid.uuid4().hex[:8]}",
            "hold": BOMB_HOLD,
        },
    }
    if mode == EMBEDDED:
        metadb = b_root / "airflow" / "airflow.db"
        targets["read_b_metadb"] = {"B's airflow.db": _existing(metadb)}
    return targets


def _libpq(url: str, **changes: Any) -> str:
    return make_url(url).set(drivername="postgresql", **changes).render_as_string(False)


def _redis_targets(server: Server, a: str, b: str, queues: dict[str, str], admin: str) -> Any:
    a_url = _scheduler_env(server, a)["AIRFLOW__CELERY__BROKER_URL"]
    prefix = celery.redis_key_prefix(queues[b])
    with RespClient(admin) as client:
        keys = client.call("SCAN", "0", "MATCH", prefix + "*", "COUNT", "100000")[1]
    key = sorted(keys)[0] if keys else prefix + queues[b]
    anonymous = urlsplit(a_url)._replace(netloc=urlsplit(a_url).netloc.rpartition("@")[2])
    attempts = [
        ("A's account", a_url, ["GET", key]),
        ("A's account", a_url, ["TYPE", key]),
        ("A's account", a_url, ["LRANGE", prefix + queues[b], "0", "-1"]),
        ("A's account", a_url, ["HGETALL", prefix + "unacked"]),
        ("A's account", a_url, ["DEL", prefix + "hostile-probe"]),
        ("A's account", a_url, ["SCAN", "0"]),
        ("A's account", a_url, ["KEYS", "*"]),
        ("A's account", a_url, ["SUBSCRIBE", prefix + "/0.celery.pidbox"]),
        ("A's account", a_url, ["PSUBSCRIBE", "*"]),
        ("A's account", a_url, ["EVAL", "return redis.call('GET', KEYS[1])", "1", key]),
        ("A's account", a_url, ["EVAL", f"return redis.call('TYPE', '{key}')", "0"]),
        ("A's account", a_url, ["ACL", "LIST"]),
        ("A's account", a_url, ["CONFIG", "GET", "*"]),
        ("no password", anonymous.geturl(), ["GET", key]),
    ]
    return {"attempts": attempts}


def _production_targets(
    server: Server, a: str, b: str, queues: dict[str, str], pg_admin: str
) -> dict[str, Any]:
    """Targets only production mode has: B's database, B's execution relay."""
    a_conn = _scheduler_env(server, a)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    b_db = database.pg_name(b)
    connect = {
        "B's database with A's role and password": _libpq(a_conn, database=b_db),
        "B's database as B's role with A's password": _libpq(a_conn, database=b_db, username=b_db),
        "B's database as postgres without a password": _libpq(
            make_url(pg_admin)._replace(password=None).render_as_string(False), database=b_db
        ),
    }
    a_secret = bundles.relay_secret(
        {"AIRFLOW__API_AUTH__JWT_SECRET": _secrets(server, a)["jwt_secret"]}
    )
    base = f"{server.endpoint}/openmwaa/workers/{b}/execution"
    variable = f"variables/{B_VARIABLE[0]}"
    relay = {
        "B's relay with A's relay secret": f"{base}/{a_secret}/{variable}",
        "B's relay with a made-up secret": f"{base}/{'0' * 64}/{variable}",
        "B's relay with no secret": f"{base}/-/{variable}",
    }
    return {"connect_b_db": connect, "relay_stolen_token": {"urls": relay}}


def _b_token(server: Server, b: str) -> tuple[str, str]:
    """A task token of B (B's key, B's issuer and audience) and B's relay secret."""
    env = _scheduler_env(server, b)
    key = _secrets(server, b)["jwt_secret"]
    issuer = env.get("AIRFLOW__API_AUTH__JWT_ISSUER") or f"openmwaa:{b}"
    audience = (env.get("AIRFLOW__EXECUTION_API__JWT_AUDIENCE") or "").split(",")[0]
    token = mint_task_token(key, issuer, audience or "urn:airflow.apache.org:task")
    secret = bundles.relay_secret({"AIRFLOW__API_AUTH__JWT_SECRET": key})
    assert secret is not None
    return token, secret


def _relay_control(server: Server, b: str, token: str, secret: str) -> tuple[int, str]:
    """The minted token, with B's own relay secret, reads B's variable: so a 403 for A
    is the relay's refusal, not a bad token."""
    url = f"{server.endpoint}/openmwaa/workers/{b}/execution/{secret}/variables/{B_VARIABLE[0]}"
    answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return answer.status_code, answer.text[:300]


def _amqp_targets(server: Server, a: str, b: str, queues: dict[str, str]) -> dict[str, Any]:
    url = urlsplit(_scheduler_env(server, a)["AIRFLOW__CELERY__BROKER_URL"])
    return {
        "amqp_b_vhost": {
            "host": f"{url.hostname}:{url.port or 5672}",
            "user": unquote(url.username or ""),
            "password": unquote(url.password or ""),
            "vhosts": [queues[b], "/"],
        }
    }


# -- one scenario ----------------------------------------------------------------------------


def _task_log(server: Server, a: str, run_id: str, task_id: str) -> list[str]:
    root = _root(server, a)
    found = sorted(root.rglob(f"dag_id=hostile/run_id={run_id}/task_id={task_id}/attempt=*.log"))
    if not found:
        return [f"(no log of {task_id} under {root})"]
    return log_events(found[-1].read_text(errors="replace"))


def _marked(mark: str) -> list[str]:
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline and cmdline[0] == mark:
            left.append(f"{proc.pid} {' '.join(cmdline)}")
    return left


def _attack(server: Server, outcome: Outcome, targets: dict[str, Any], attacks: list[str]) -> None:
    """Put A's DAG in place, run it beside B's, watch the API; fill ``outcome``."""
    mwaa = server.client()
    a, b = outcome.a, outcome.b
    chosen = {task: targets[task] for task in attacks}
    (server.data_dir / "buckets" / BUCKET_A / "dags" / "hostile.py").write_text(hostile_dag(chosen))
    started = time.monotonic()
    _wait_dag(mwaa, a, "hostile")
    _wait_dag(mwaa, b, "steady")
    outcome.timings["dags visible"] = time.monotonic() - started
    watch = ApiWatch(server, a)
    watch.start()
    started = time.monotonic()
    try:
        outcome.run_id = _trigger(mwaa, a, "hostile")
        b_runs = [_trigger(mwaa, b, "steady")]
        deadline = time.monotonic() + RUN_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # A may be busy dying of its own attacks
                tasks = _task_instances(mwaa, a, "hostile", outcome.run_id)
                outcome.states = {task: ti.get("state") for task, ti in tasks.items()}
                outcome.durations = {task: ti.get("duration") for task, ti in tasks.items()}
                state = _run_state(mwaa, a, "hostile", outcome.run_id)
            if len(b_runs) == 1 and (
                outcome.states.get("fork_bomb") == "running" or "fork_bomb" not in attacks
            ):
                outcome.b2_during_bomb = outcome.states.get("fork_bomb") == "running"
                b_runs.append(_trigger(mwaa, b, "steady"))
            if state in ("success", "failed"):
                break
            time.sleep(2)
        else:
            raise AssertionError(f"A's hostile run still {state!r}: {outcome.states}")
        outcome.timings["A's run"] = time.monotonic() - started
        if len(b_runs) == 1:
            b_runs.append(_trigger(mwaa, b, "steady"))
        for run_id in b_runs:
            outcome.b_runs[run_id] = _wait_b_run(mwaa, b, run_id)
        outcome.timings["A's and B's runs"] = time.monotonic() - started
    finally:
        watch.stop()
        outcome.api_calls, outcome.api_errors = watch.calls, watch.errors
        outcome.a_statuses = watch.a_statuses
        outcome.server_alive = server.process is not None and server.process.poll() is None
    for task in attacks:
        outcome.logs[task] = _task_log(server, a, outcome.run_id, task)
    outcome.leftovers = _marked(targets["fork_bomb"]["mark"]) if "fork_bomb" in attacks else []
    try:
        # A's own components may have failed while its fork bomb held its pids limit: the
        # supervisor calls them crash-looping until one has run STABLE_AFTER (120 s).
        outcome.a_status_after = wait_status(mwaa, a, {"AVAILABLE"}, 240)["Status"]
    except AssertionError as exc:
        outcome.a_status_after = str(exc)
    outcome.a_diagnosis = _diagnosis(server, outcome)
    for task in attacks:
        print(_summary(outcome, task))


def _summary(outcome: Outcome, task: str) -> str:
    """One line per task for the run's output: its state, time and what it saw."""
    lines = outcome.logs.get(task, [])
    said = [line for line in lines if re.match(r"(DENIED|SUCCEEDED|UNCLEAR|BOMB)", line)]
    held = [line for line in lines if line.startswith("HOG")][-1:]
    killed = [line for line in lines if "terminated by signal" in line][-1:]
    took = outcome.durations.get(task)
    when = f" in {took:.0f}s" if isinstance(took, int | float) else ""
    return (
        f"  {task}: {outcome.states.get(task)}{when}; " + " | ".join([*said, *held, *killed])[:700]
    )


def _diagnosis(server: Server, outcome: Outcome) -> str:
    lines = [f"A's statuses while attacked: {', '.join(outcome.a_statuses)}"]
    with contextlib.suppress(OSError):
        said = [line.rstrip() for line in server.log.read_text(errors="replace").splitlines()]
        lines.append("serve.log (last 40 lines):")
        lines += said[-40:]
    for log in sorted((_root(server, outcome.a) / "logs").glob("*.log")):
        with contextlib.suppress(OSError):
            tail = log.read_text(errors="replace").splitlines()[-12:]
            lines += [f"{log.name}:", *(f"  {line[:300]}" for line in tail)]
    return "\n".join(lines)


def _wait_b_run(mwaa: Any, b: str, run_id: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    state = "queued"
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            state = _run_state(mwaa, b, "steady", run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    return f"still {state} after {timeout} s"


def _scenario(
    mode: str,
    runtimes: Path,
    variables: dict[str, str],
    *,
    pg_admin: str | None = None,
    redis_admin: str | None = None,
) -> Outcome:
    outcome = Outcome(mode, a=f"hta{uuid.uuid4().hex[:6]}", b=f"htb{uuid.uuid4().hex[:6]}")
    data_dir = _data_dir(runtimes)
    begun = time.monotonic()
    server = _start(data_dir, variables)
    try:
        mwaa = server.client()
        envs = _create(mwaa, outcome.a, outcome.b)
        outcome.timings["create"] = time.monotonic() - begun
        queues = {
            n: str(e.get("CeleryExecutorQueue", "")).rsplit(":", 1)[-1] for n, e in envs.items()
        }
        attacks = attacks_for(mode)
        targets = _common_targets(server, outcome.a, outcome.b, mode)
        outcome.hog_target_mib = targets["memory_hog"]["target_mib"]
        outcome.bomb_bound = targets["fork_bomb"]["bound"]
        if mode == REDIS:
            assert pg_admin and redis_admin
            targets.update(_production_targets(server, outcome.a, outcome.b, queues, pg_admin))
            targets["redis_b_keys"] = _redis_targets(
                server, outcome.a, outcome.b, queues, redis_admin
            )
            key, value = B_VARIABLE
            _patiently(
                "B's variable",
                lambda: _rest(
                    mwaa, outcome.b, "POST", "/variables", Body={"key": key, "value": value}
                ),
            )
            token, b_secret = _b_token(server, outcome.b)
            targets["relay_stolen_token"]["token"] = token
            outcome.relay_control = _relay_control(server, outcome.b, token, b_secret)
        if mode == RABBITMQ:
            targets.update(_amqp_targets(server, outcome.a, outcome.b, queues))
        _attack(server, outcome, targets, attacks)
    finally:
        outcome.timings["total"] = time.monotonic() - begun
        print(f"\nhostile tenant, {mode}: {json.dumps(outcome.timings)}")
        _cleanup(server, data_dir)
    return outcome


@pytest.fixture(scope="module")
def embedded(airflow_runtimes: Path) -> Outcome:
    return _scenario(EMBEDDED, airflow_runtimes, {})


@pytest.fixture(scope="module")
def on_redis(airflow_runtimes: Path, private_postgres_url: str, private_redis_url: str) -> Outcome:
    variables = {
        "OPENMWAA_AIRFLOW_DATABASE_URL": private_postgres_url,
        "OPENMWAA_BROKER_URL": private_redis_url,
    }
    return _scenario(
        REDIS,
        airflow_runtimes,
        variables,
        pg_admin=private_postgres_url,
        redis_admin=private_redis_url,
    )


@pytest.fixture(scope="module")
def on_rabbitmq(airflow_runtimes: Path, private_postgres_url: str) -> Outcome:
    if not _port_open(15672):
        pytest.skip("RabbitMQ's management API is not on 127.0.0.1:15672")
    variables = {
        "OPENMWAA_AIRFLOW_DATABASE_URL": private_postgres_url,
        "OPENMWAA_BROKER_URL": RABBITMQ_URL,
        "OPENMWAA_RABBITMQ_MANAGEMENT_URL": RABBITMQ_MANAGEMENT,
    }
    return _scenario(RABBITMQ, airflow_runtimes, variables)


# -- judging ---------------------------------------------------------------------------------


def _log(outcome: Outcome, task: str) -> str:
    lines = outcome.logs.get(task, [])
    keep = [
        line
        for line in lines
        if re.search(r"DENIED|SUCCEEDED|UNCLEAR|HOG|BOMB|signal|Error|error|Traceback", line)
    ]
    return "\n    ".join((keep or lines)[-30:])


def _assert_closed(outcome: Outcome, task: str) -> None:
    attack = ATTACKS[task]
    state = outcome.states.get(task)
    where = f"[{outcome.mode}] {attack.description} (task {task} is {state})"
    if task == "memory_hog":
        log = _log(outcome, task)
        held = [int(m) for m in re.findall(r"HOG holds (\d+) MiB", log)]
        assert state == "failed", (
            f"{where}: not killed, A held {max(held, default=0)} MiB "
            f"(target {outcome.hog_target_mib} MiB):\n    {log}"
        )
        assert "SIGKILL" in log, f"{where}: failed, but not killed by SIGKILL:\n    {log}"
        assert max(held, default=0) < outcome.hog_target_mib, f"{where}: reached its target"
        return
    if task == "fork_bomb":
        log = _log(outcome, task)
        assert state == "success", f"{where}: fork() never failed with EAGAIN:\n    {log}"
        assert "errno 11" in log.lower() or "BlockingIOError" in log, log
        assert outcome.leftovers == [], f"{where}: children left behind: {outcome.leftovers}"
        return
    assert state == attack.expected, (
        f"{where}: the attack was not denied:\n    {_log(outcome, task)}"
    )


def _assert_others_carry_on(outcome: Outcome) -> None:
    assert outcome.b_runs and set(outcome.b_runs.values()) == {"success"}, (
        f"[{outcome.mode}] B's runs while A attacked: {outcome.b_runs}"
    )
    assert outcome.server_alive, f"[{outcome.mode}] the server died during the attacks"
    assert outcome.api_calls > 10 and not outcome.api_errors, (
        f"[{outcome.mode}] ListEnvironments failed {len(outcome.api_errors)} of "
        f"{outcome.api_calls} times: {outcome.api_errors[:5]}"
    )


def _assert_a_recovers(outcome: Outcome) -> None:
    """A's memory hog and fork bomb were killed inside A; A itself is AVAILABLE again."""
    assert outcome.a_status_after == "AVAILABLE", (
        f"[{outcome.mode}] A after its attacks: {outcome.a_status_after}\n{outcome.a_diagnosis}"
    )


@pytest.mark.parametrize("attack", attacks_for(EMBEDDED))
def test_embedded_attack_is_closed(embedded: Outcome, attack: str) -> None:
    _assert_closed(embedded, attack)


def test_embedded_b_and_the_api_carry_on(embedded: Outcome) -> None:
    _assert_others_carry_on(embedded)
    assert embedded.b2_during_bomb, "B's second run was started while A's fork bomb ran"


def test_embedded_a_recovers_from_its_own_attacks(embedded: Outcome) -> None:
    _assert_a_recovers(embedded)


@pytest.mark.parametrize("attack", attacks_for(REDIS))
def test_postgres_redis_attack_is_closed(on_redis: Outcome, attack: str) -> None:
    _assert_closed(on_redis, attack)


def test_postgres_redis_stolen_token_is_good_for_b(on_redis: Outcome) -> None:
    """The relay attacks refused a token that B's own relay secret lets through."""
    assert on_redis.relay_control is not None
    status, body = on_redis.relay_control
    assert status == 200 and B_VARIABLE[1] in body, f"B's own relay: {status} {body}"


def test_postgres_redis_b_and_the_api_carry_on(on_redis: Outcome) -> None:
    _assert_others_carry_on(on_redis)


def test_postgres_redis_a_recovers_from_its_own_attacks(on_redis: Outcome) -> None:
    _assert_a_recovers(on_redis)


@pytest.mark.parametrize("attack", attacks_for(RABBITMQ))
def test_postgres_rabbitmq_attack_is_closed(on_rabbitmq: Outcome, attack: str) -> None:
    _assert_closed(on_rabbitmq, attack)


def test_postgres_rabbitmq_b_and_the_api_carry_on(on_rabbitmq: Outcome) -> None:
    _assert_others_carry_on(on_rabbitmq)
