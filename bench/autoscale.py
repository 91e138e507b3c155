"""Worker autoscaling and Celery throughput, against fixed workers and Airflow started by hand.

Starts ``openmwaa serve`` in production mode (CeleryExecutor on the local PostgreSQL and
Redis, the Airflow install shared with ``~/.openmwaa`` or the runtime tests when present)
and measures, one environment at a time (mw1.small: 5 tasks per worker, 2 schedulers):

1. a burst of short tasks (one DAG, ``--tasks`` tasks sleeping ``--sleep`` s each,
   max_active_tasks as large as the DAG) on MinWorkers 1 / MaxWorkers 4 (autoscaled),
   on Min = Max = 1 and on Min = Max = 4: the drain time (trigger -> the run's end), the
   scale-out reaction (trigger -> a second worker process exists, -> it says "ready",
   -> it runs a task, -> the scale-out decision appears in the server log) and the
   worker processes every 0.5 s, drawn as a PNG (``--png``, needs matplotlib);
2. ``--noops`` no-op tasks on one worker (Min = Max = 1), a warm-up run then
   ``--noop-runs`` runs, against the same Airflow install started by hand on the same
   broker (own queue and key prefix) with a fresh PostgreSQL database, the settings of
   an environment (parallelism, worker concurrency, prefetch multiplier 1, default
   queue, DAG-processor intervals), one scheduler (``--raw-schedulers``), dag-processor,
   triggerer, api-server and one ``airflow celery worker --concurrency 5``: throughput =
   tasks / (last task end - first task start), the median run of each side, and the
   ratio (goal >= 0.95x).

Prints a summary and the lines for the README's performance table, then removes
everything it made: environments, server (SIGTERM), hand-started processes (by process
group), databases, broker keys, temporary folders.

    .venv/bin/python bench/autoscale.py [--quick] [--tasks 200] [--sleep 2] [--noops 100]
        [--noop-runs 3] [--max-workers 4] [--cooldown 10] [--raw-schedulers 1]
        [--broker redis://127.0.0.1:6379/0] [--png bench/autoscale.png]

``--quick`` (a smoke run, about 5 minutes): 20 tasks, 20 no-ops, one no-op run.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from openmwaa.runtime.brokers.redis_acl import RespError, purge_keys
from openmwaa.runtime.celery import check_broker, running_tasks
from openmwaa.runtime.installs import DEFAULT_VERSION, ensure_install
from openmwaa.runtime.supervisor import read_pidfile, terminate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_support import bench_data_dir, shared_runtimes, start_component  # noqa: E402
from live_server import (  # noqa: E402
    POSTGRES_ADMIN,
    REQUIRED,
    Server,
    free_port,
    wait_status,
)

BROKER = "redis://127.0.0.1:6379/0"
BUCKET = "bench-autoscale"
CLASS = "mw1.small"
TASKS_PER_WORKER = 5
"""mw1.small's tasks per worker (Celery concurrency)."""
SCHEDULERS = 2
"""mw1.small's least number of schedulers."""
PARALLELISM = TASKS_PER_WORKER * 25
"""What openmwaa gives a Celery environment: tasks per worker x MWAA's MaxWorkers cap."""
CHART_EVERY = 0.5
"""Seconds between two points of the worker-count chart."""
PROBE_EVERY = 0.25
"""Seconds between two looks at the workers (reaction times are this precise)."""
RUN_TIMEOUT = 1800.0

DAG_TEMPLATE = """
{imports}import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def {function}():
    {body}


with DAG(
    "{dag_id}",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1),
    catchup=False,
    max_active_tasks={tasks},
):
    for i in range({tasks}):
        PythonOperator(task_id=f"{task_prefix}{{i}}", python_callable={function})
"""


def tasks_dag(
    dag_id: str, tasks: int, task_prefix: str, function: str, body: str, imports: str = ""
) -> str:
    """DAG ``dag_id``: ``tasks`` tasks ``<task_prefix>N`` that may all run at once, each a
    PythonOperator calling ``function`` (of one line, ``body``)."""
    return DAG_TEMPLATE.format(
        imports=imports,
        function=function,
        body=body,
        dag_id=dag_id,
        tasks=tasks,
        task_prefix=task_prefix,
    )


def burst_dag(tasks: int, seconds: float) -> str:
    return tasks_dag("burst", tasks, "t", "pause", f"time.sleep({seconds})", "import time\n\n")


def noop_dag(tasks: int) -> str:
    # PythonOperator, not EmptyOperator: the scheduler marks EmptyOperator tasks done
    # without sending them to any worker.
    return tasks_dag("noop", tasks, "n", "noop", "return None")


Api = Callable[..., Any]
"""api(method, path, body=None, query=None) -> the Airflow REST API's JSON answer."""


# -- the Airflow REST API, through InvokeRestApi or straight ------------------------------


def mwaa_api(mwaa: Any, name: str) -> Api:
    def call(method: str, path: str, body: Any = None, query: Any = None) -> Any:
        extra: dict[str, Any] = {}
        if body is not None:
            extra["Body"] = body
        if query is not None:
            extra["QueryParameters"] = query
        answer = mwaa.invoke_rest_api(Name=name, Method=method, Path=path, **extra)
        return answer["RestApiResponse"]

    return call


def direct_api(base: str) -> Api:
    client = httpx.Client(base_url=f"{base}/api/v2", timeout=60)

    def call(method: str, path: str, body: Any = None, query: Any = None) -> Any:
        answer = client.request(method, path, json=body, params=query)
        answer.raise_for_status()
        return answer.json()

    return call


TRANSIENT = (ClientError, BotoCoreError, httpx.HTTPError)


def wait_dag(api: Api, dag: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api("GET", f"/dags/{dag}")
            return
        except TRANSIENT:
            time.sleep(0.5)
    raise RuntimeError(f"DAG {dag} not visible after {timeout:.0f} s")


def unpause(api: Api, dag: str) -> None:
    api("PATCH", f"/dags/{dag}", body={"is_paused": False})


def start_run(api: Api, dag: str) -> str:
    # A short run id: InvokeRestApi paths are at most 64 characters, as on MWAA.
    run_id = f"r{uuid.uuid4().hex[:6]}"
    api("POST", f"/dags/{dag}/dagRuns", body={"dag_run_id": run_id, "logical_date": None})
    return run_id


def trigger(api: Api, dag: str) -> tuple[str, float]:
    """Unpause (not timed), then trigger: (run id, wall time of the trigger)."""
    unpause(api, dag)
    wall = time.time()
    return start_run(api, dag), wall


def wait_run(api: Api, dag: str, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state = "queued"
    while time.monotonic() < deadline:
        try:
            run = api("GET", f"/dags/{dag}/dagRuns/{run_id}")
        except TRANSIENT:
            time.sleep(1)
            continue
        state = run["state"]
        if state in ("success", "failed"):
            return dict(run)
        time.sleep(1)
    raise RuntimeError(f"{dag} run {run_id} still {state} after {timeout:.0f} s")


def task_instances(api: Api, dag: str, run_id: str) -> list[dict[str, Any]]:
    found: dict[tuple[str, int], dict[str, Any]] = {}
    while True:  # the API answers at most 100 per page
        answer = api(
            "GET",
            f"/dags/{dag}/dagRuns/{run_id}/taskInstances",
            query={"limit": 100, "offset": len(found)},
        )
        before = len(found)
        for ti in answer["task_instances"]:
            found[(ti["task_id"], ti.get("map_index", -1))] = ti
        if len(found) >= answer["total_entries"]:
            return list(found.values())
        if len(found) == before:
            raise RuntimeError(f"paging through the task instances of {run_id} got stuck")


def stamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass
class RunFigures:
    """What one DAG run took, from Airflow's own timestamps."""

    tasks: int
    drain: float
    """Trigger -> the run's end_date."""
    first_start: float
    """Trigger -> the first task's start_date."""
    span: float
    """First task start -> last task end."""
    failed: int

    @property
    def throughput(self) -> float:
        return self.tasks / self.span if self.span > 0 else 0.0


def run_figures(api: Api, dag: str, run_id: str, wall: float) -> RunFigures:
    run = wait_run(api, dag, run_id)
    tis = task_instances(api, dag, run_id)
    starts = [stamp(ti["start_date"]) for ti in tis if ti.get("start_date")]
    ends = [stamp(ti["end_date"]) for ti in tis if ti.get("end_date")]
    failed = sum(1 for ti in tis if ti["state"] != "success")
    first = min(starts) if starts else wall
    span = max(ends) - first if ends else 0.0
    return RunFigures(len(tis), stamp(run["end_date"]) - wall, first - wall, span, failed)


def noop_runs(api: Api, runs: int, console: Console) -> list[RunFigures]:
    """The no-op DAG once to warm up (not counted), then ``runs`` times, one after the other."""
    results = []
    for n in range(runs + 1):
        run_id, wall = trigger(api, "noop")
        figures = run_figures(api, "noop", run_id, wall)
        console.print(f"  {'warm-up' if n == 0 else f'run {n}'}: {figures.throughput:.2f} tasks/s")
        if n:
            results.append(figures)
    return results


def median_run(runs: list[RunFigures]) -> RunFigures:
    return sorted(runs, key=lambda r: r.throughput)[len(runs) // 2]


# -- watching an environment's workers ----------------------------------------------------


def live_workers(run_dir: Path) -> dict[str, psutil.Process]:
    """The environment's running worker processes, from the pid files the server keeps."""
    found = {}
    for pidfile in run_dir.glob("worker-*.json"):
        entry = read_pidfile(pidfile)
        if entry is not None:
            found[pidfile.stem] = entry[0]
    return found


def ready_at(log: Path, after: float) -> float | None:
    """Wall time of the first "ready." a Celery worker logged after ``after``."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for match in re.finditer(r"^(\S+Z) \[info\s*\] \S+ ready\.", text, re.MULTILINE):
        when = stamp(match.group(1))
        if when >= after:
            return when
    return None


def wait_workers_ready(env_dir: Path, count: int, timeout: float = 240) -> None:
    """Until ``count`` workers run and each said "ready." since its last start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = live_workers(env_dir / "run")
        if len(workers) == count and all(
            "ready." in log_since_start(env_dir / "logs" / f"{name}.log") for name in workers
        ):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{count} ready workers not seen in {timeout:.0f} s under {env_dir}")


def log_since_start(log: Path) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return text.rsplit("--- openmwaa: starting", 1)[-1]


class Sampler(threading.Thread):
    """Looks at an environment's workers every PROBE_EVERY s from the trigger on."""

    def __init__(self, env_dir: Path, server_log: Path, name: str, t0: float) -> None:
        super().__init__(daemon=True)
        self.run_dir = env_dir / "run"
        self.env_name = name
        self.t0 = t0
        self.initial = set(live_workers(self.run_dir))
        self.samples: list[tuple[float, int]] = []
        self.second_worker: float | None = None
        self.new_worker_task: float | None = None
        self.log = server_log.open("rb")
        self.log.seek(0, os.SEEK_END)
        self.chunks: list[tuple[int, float]] = []  # (offset in self.text, time read)
        self.text = ""
        self._done = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> None:
        next_point = 0.0
        while not self._done.is_set():
            now = self.now()
            workers = live_workers(self.run_dir)
            if now >= next_point:
                self.samples.append((now, len(workers)))
                next_point += CHART_EVERY
            if self.second_worker is None and len(self.initial) < 2 <= len(workers):
                self.second_worker = now
            if self.new_worker_task is None:
                for name, proc in workers.items():
                    with contextlib.suppress(psutil.Error):
                        if name not in self.initial and running_tasks(proc) > 0:
                            self.new_worker_task = now
                            break
            chunk = self.log.read().decode(errors="replace")
            if chunk:
                self.chunks.append((len(self.text), now))
                self.text += chunk
            self._done.wait(PROBE_EVERY)

    def stop(self) -> None:
        self._done.set()
        self.join(10)
        self.log.close()

    def decisions(self) -> list[tuple[float, str]]:
        """The server's scale decisions for this environment: (time seen, summary)."""
        pattern = re.compile(
            rf"environment\s+{re.escape(self.env_name)}:\s+(scale\s+out|scale\s+in):\s+"
            r"(\d+)\s+->\s+(\d+)\s+workers\s+\(\d+\s+on\s+other\s+hosts;\s+queued\s+(\d+),"
            r"\s+running\s+(\d+)"
        )
        offsets = [offset for offset, _ in self.chunks]
        found = []
        for match in pattern.finditer(self.text):
            seen = self.chunks[bisect.bisect_right(offsets, match.end() - 1) - 1][1]
            kind, old, new, queued, running = match.groups()
            what = " ".join(kind.split())
            found.append((seen, f"{what} {old}->{new} (queued {queued}, running {running})"))
        return found


# -- section 1: a burst on autoscaled and fixed workers -----------------------------------


@dataclass
class Burst:
    label: str
    min_workers: int
    max_workers: int
    figures: RunFigures
    samples: list[tuple[float, int]]
    second_worker: float | None = None
    second_ready: float | None = None
    new_worker_task: float | None = None
    decision: float | None = None
    decisions: list[tuple[float, str]] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max((n for _, n in self.samples), default=0)

    @property
    def worker_seconds(self) -> float:
        """Worker processes x seconds from the trigger to the run's end (what it cost)."""
        return sum(n * CHART_EVERY for t, n in self.samples if 0 <= t < self.figures.drain)


def create_env(mwaa: Any, name: str, min_workers: int, max_workers: int) -> None:
    mwaa.create_environment(
        Name=name,
        **{**REQUIRED, "SourceBucketArn": f"arn:aws:s3:::{BUCKET}"},
        EnvironmentClass=CLASS,
        MinWorkers=min_workers,
        MaxWorkers=max_workers,
        Schedulers=SCHEDULERS,
    )
    env = wait_status(mwaa, name, {"AVAILABLE", "CREATE_FAILED"}, timeout=600)
    if env["Status"] != "AVAILABLE":
        raise RuntimeError(f"{name} is {env['Status']}: {env.get('LastUpdate')}")


def delete_env(mwaa: Any, name: str, timeout: float = 300) -> None:
    """Delete and wait until it is gone (openmwaa removes its broker keys too)."""
    mwaa.delete_environment(Name=name)
    deadline = time.monotonic() + timeout
    while name in mwaa.list_environments()["Environments"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not deleted after {timeout:.0f} s")
        time.sleep(0.5)


def burst(
    server: Server,
    mwaa: Any,
    name: str,
    label: str,
    min_workers: int,
    max_workers: int,
    cooldown: float,
) -> Burst:
    env_dir = server.data_dir / "environments" / name
    api = mwaa_api(mwaa, name)
    wait_workers_ready(env_dir, min_workers)
    wait_dag(api, "burst")
    unpause(api, "burst")
    wall, t0 = time.time(), time.monotonic()
    sampler = Sampler(env_dir, server.log, name, t0)
    sampler.start()
    try:
        run_id = start_run(api, "burst")
        figures = run_figures(api, "burst", run_id, wall)
        # The tail: autoscaled workers back to MinWorkers after the cool-down.
        until = time.monotonic() + (cooldown + 60 if min_workers < max_workers else 3)
        while time.monotonic() < until:
            if min_workers < max_workers and len(live_workers(env_dir / "run")) <= min_workers:
                time.sleep(2)  # a few points at MinWorkers on the chart
                break
            time.sleep(0.5)
    finally:
        sampler.stop()
    new = set(live_workers(env_dir / "run")) | {
        p.stem for p in (env_dir / "logs").glob("worker-*.log")
    }
    readies = [
        ready_at(env_dir / "logs" / f"{worker}.log", wall)
        for worker in sorted(new - sampler.initial)
    ]
    ready = [r - wall for r in readies if r is not None]
    decisions = sampler.decisions()
    outs = [t for t, what in decisions if what.startswith("scale out")]
    return Burst(
        label,
        min_workers,
        max_workers,
        figures,
        sampler.samples,
        second_worker=sampler.second_worker,
        second_ready=min(ready) if ready and len(sampler.initial) < 2 else None,
        new_worker_task=sampler.new_worker_task,
        decision=outs[0] if outs else None,
        decisions=decisions,
    )


# -- section 2: the same Airflow started by hand ------------------------------------------


def raw_airflow(
    install: Path, dag_text: str, broker: str, schedulers: int, runs: int, console: Console
) -> list[RunFigures]:
    """The no-op DAG on Airflow started by hand with the environment's Celery settings."""
    home = Path(tempfile.mkdtemp(prefix="openmwaa-bench-raw-"))
    (home / "dags").mkdir()
    (home / "dags" / "noop.py").write_text(dag_text)
    suffix = uuid.uuid4().hex[:8]
    database = f"openmwaa_bench_raw_{suffix}"
    queue = f"bench-raw-{suffix}"
    admin = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", POSTGRES_ADMIN)
    conn = (
        make_url(admin)
        .set(drivername="postgresql+psycopg2", database=database)
        .render_as_string(hide_password=False)
    )
    api_port, worker_log, trigger_log = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{api_port}"
    inherited = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER")
    env = {k: os.environ[k] for k in inherited if k in os.environ}
    env.update(
        {
            "PATH": f"{install / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
            "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log),
            # Every API call is the admin's: the bench calls the REST API without a login.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # The settings of an openmwaa Celery environment (runtime/config.py, celery.py).
            "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + conn,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(TASKS_PER_WORKER),
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "1",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        }
    )
    if broker.startswith("redis"):
        env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] = f"{queue}:"
    airflow = str(install / "bin" / "airflow")
    worker = [
        airflow, "celery", "worker", "--queues", queue,
        "--concurrency", str(TASKS_PER_WORKER), "--celery-hostname", f"{queue}-w1@%h",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    commands = {
        **{f"scheduler-{n}": [airflow, "scheduler"] for n in range(1, schedulers + 1)},
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer"],
        "api-server": [airflow, "api-server"],
        "worker": worker,
    }
    procs: list[psutil.Process] = []
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{database}"')
    try:
        console.print("  hand start: airflow db migrate")
        migrate = subprocess.run(
            [airflow, "db", "migrate"], env=env, cwd=home, capture_output=True, text=True
        )
        if migrate.returncode:
            raise RuntimeError(f"airflow db migrate failed: {migrate.stderr[-2000:]}")
        for component, argv in commands.items():
            procs.append(start_component(argv, env, home, component))
        api = direct_api(base)
        deadline = time.monotonic() + 300
        while "ready." not in (home / "worker.log").read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hand-started worker is not ready; logs in {home}")
            time.sleep(0.5)
        wait_dag(api, "noop", timeout=300)
        console.print("  hand start: running the no-op DAG")
        return noop_runs(api, runs, console)
    except Exception:
        for path in sorted(home.glob("*.log")):
            console.print(f"[red]{path.name}[/red]: {tail(path, 1500)}")
        raise
    finally:
        terminate(procs, grace=20)
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        with contextlib.suppress(OSError, RespError):
            purge_keys(broker, f"{queue}:")
        shutil.rmtree(home, ignore_errors=True)


# -- the chart and the summary ------------------------------------------------------------


def plot(bursts: list[Burst], path: Path, tasks: int, seconds: float) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 4.5))
    styles = [("tab:blue", "-", 2.2), ("tab:orange", "--", 1.6), ("tab:green", "--", 1.6)]
    for result, (color, line, width) in zip(bursts, styles, strict=False):
        ax.step(
            [t for t, _ in result.samples],
            [n for _, n in result.samples],
            where="post",
            color=color,
            linestyle=line,
            linewidth=width,
            label=f"{result.label}: drained in {result.figures.drain:.0f} s",
        )
        ax.axvline(result.figures.drain, color=color, linestyle=":", linewidth=1)
    top = max((b.peak for b in bursts), default=1)
    ax.set_ylim(0, top + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the DAG run was triggered (dotted: the run ended)")
    ax.set_ylabel("worker processes")
    ax.set_title(
        f"{tasks} tasks of {seconds:g} s on mw1.small ({TASKS_PER_WORKER} tasks per worker)"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(bursts), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def seconds_or_dash(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def summary(
    console: Console,
    bursts: list[Burst],
    ours_runs: list[RunFigures],
    raw_runs: list[RunFigures],
    args: argparse.Namespace,
) -> None:
    table = Table(
        title=f"{args.tasks} tasks of {args.sleep:g} s, {CLASS} (seconds from the trigger)"
    )
    columns = (
        "workers", "drain", "1st task", "task span", "tasks/s", "scale-out logged",
        "2nd worker", "2nd ready", "task on new", "peak", "worker-s",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "workers" else "right")
    for b in bursts:
        table.add_row(
            b.label,
            f"{b.figures.drain:.1f}",
            f"{b.figures.first_start:.1f}",
            f"{b.figures.span:.1f}",
            f"{b.figures.throughput:.2f}",
            seconds_or_dash(b.decision),
            seconds_or_dash(b.second_worker),
            seconds_or_dash(b.second_ready),
            seconds_or_dash(b.new_worker_task),
            str(b.peak),
            f"{b.worker_seconds:.0f}",
        )
    console.print(table)
    console.print(
        "drain: trigger -> the run's end; 1st task: trigger -> the first task started; "
        "task span: first task start -> last task end; scale-out logged: the server logged "
        "its first scale-out; 2nd worker: a second worker process exists / said ready / "
        "runs a task; worker-s: worker processes x seconds until the run's end"
    )
    auto = bursts[0]
    if auto.decisions:
        console.print("scale decisions of the autoscaled run (server log):")
        for seen, what in auto.decisions:
            console.print(f"  {seen:6.1f} s  {what}")
    for b in bursts:
        if b.figures.failed:
            console.print(f"[red]{b.label}: {b.figures.failed} tasks did not succeed[/red]")

    ours, raw = median_run(ours_runs), median_run(raw_runs)
    ratio = ours.throughput / raw.throughput if raw.throughput else 0.0
    table = Table(
        title=f"{args.noops} no-op tasks on one Celery worker (concurrency 5), "
        f"median of {args.noop_runs} runs by throughput"
    )
    noop_columns = (
        "run",
        "drain s",
        "1st task s",
        "task span s",
        "tasks/s",
        "all runs",
        "vs by hand",
    )
    for column in noop_columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for label, runs, versus in (
        (f"openmwaa ({CLASS}, {SCHEDULERS} schedulers)", ours_runs, f"{ratio:.2f}x (>= 0.95x)"),
        (f"Airflow by hand ({args.raw_schedulers} scheduler)", raw_runs, ""),
    ):
        run = median_run(runs)
        table.add_row(
            label,
            f"{run.drain:.1f}",
            f"{run.first_start:.1f}",
            f"{run.span:.1f}",
            f"{run.throughput:.2f}",
            ", ".join(f"{r.throughput:.2f}" for r in runs),
            versus,
        )
        failed = sum(r.failed for r in runs)
        if failed:
            console.print(f"[red]{label}: {failed} no-op tasks did not succeed[/red]")
    console.print(table)

    baseline = "; ".join(f"{b.label}: {b.figures.drain:.0f} s" for b in bursts[1:])
    console.print("\nREADME performance table:")
    print(
        f"| {args.tasks} tasks of {args.sleep:g} s, {auto.label} (`bench/autoscale.py`): "
        f"drain; 2nd worker started / ready / running a task | "
        f"{auto.figures.drain:.0f} s; {seconds_or_dash(auto.second_worker)} / "
        f"{seconds_or_dash(auto.second_ready)} / {seconds_or_dash(auto.new_worker_task)} s | "
        f"{baseline} | |"
    )
    print(
        f"| {args.noops} no-op tasks on one Celery worker, throughput "
        f"(median of {args.noop_runs}) | "
        f"{ours.throughput:.2f} tasks/s ({ratio:.2f}×) | "
        f"Airflow started by hand: {raw.throughput:.2f} tasks/s | ≥ 0.95× |"
    )


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 tasks and 20 no-ops")
    parser.add_argument("--tasks", type=int, help="tasks of the burst (default 200)")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds each burst task takes")
    parser.add_argument("--noops", type=int, help="no-op tasks of the throughput run (100)")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--cooldown", type=float, default=10.0, help="--scale-in-cooldown")
    parser.add_argument(
        "--noop-runs", type=int, help="counted runs of the no-op DAG on each side (3)"
    )
    parser.add_argument("--raw-schedulers", type=int, default=1)
    parser.add_argument("--broker", default=BROKER)
    parser.add_argument(
        "--png", type=Path, default=Path(__file__).resolve().parent / "autoscale.png"
    )
    args = parser.parse_args()
    args.tasks = args.tasks or (20 if args.quick else 200)
    args.noops = args.noops or (20 if args.quick else 100)
    args.noop_runs = args.noop_runs or (1 if args.quick else 3)
    # Wide enough for the tables when the output goes to a file.
    console = Console() if sys.stdout.isatty() else Console(width=130)
    started = time.monotonic()
    check_broker(args.broker)
    with psycopg.connect(POSTGRES_ADMIN, connect_timeout=5) as conn:
        conn.execute("SELECT 1")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        console.print("[yellow]matplotlib is not installed: no chart will be drawn[/yellow]")

    # The install `make install` builds (or the runtime tests'), built there if missing.
    shared = shared_runtimes()
    install = ensure_install(
        shared.parent, DEFAULT_VERSION, None, lambda s: console.print(f"  {s}")
    )
    data_dir, dags = bench_data_dir("openmwaa-bench-autoscale-", shared, BUCKET)
    noop_text = noop_dag(args.noops)
    (dags / "burst.py").write_text(burst_dag(args.tasks, args.sleep))
    (dags / "noop.py").write_text(noop_text)
    server = Server(
        data_dir,
        [
            "--airflow-database-url", POSTGRES_ADMIN,
            "--broker-url", args.broker,
            "--scale-in-cooldown", str(args.cooldown),
        ],
    )  # fmt: skip
    suffix = uuid.uuid4().hex[:4]
    top = args.max_workers
    runs = [
        (f"autoscaled 1-{top}", f"bench-auto-{suffix}", 1, top),
        (f"fixed {top}", f"bench-fixed{top}-{suffix}", top, top),
        ("fixed 1", f"bench-fixed1-{suffix}", 1, 1),
    ]
    created: list[str] = []
    bursts: list[Burst] = []
    ours: list[RunFigures] = []
    raw: list[RunFigures] = []
    try:
        server.start()
        mwaa = server.client()
        for label, name, low, high in runs:
            console.print(f"{label}: creating {name}")
            created.append(name)
            create_env(mwaa, name, low, high)
            console.print(f"{label}: {args.tasks} tasks of {args.sleep:g} s")
            bursts.append(burst(server, mwaa, name, label, low, high, args.cooldown))
            b = bursts[-1]
            console.print(
                f"  drained in {b.figures.drain:.1f} s, peak {b.peak} workers, "
                f"2nd worker at {seconds_or_dash(b.second_worker)} s"
            )
            if low == high == 1:
                console.print(f"{label}: {args.noops} no-op tasks x {args.noop_runs}")
                api = mwaa_api(mwaa, name)
                wait_workers_ready(server.data_dir / "environments" / name, 1)
                wait_dag(api, "noop")
                ours = noop_runs(api, args.noop_runs, console)
            console.print(f"{label}: deleting {name}")
            delete_env(mwaa, name)
            created.remove(name)
        server.stop()
        console.print("Airflow started by hand: the no-op DAG")
        raw = raw_airflow(
            install, noop_text, args.broker, args.raw_schedulers, args.noop_runs, console
        )
    except Exception:
        console.print(f"[red]failed; server log tail:[/red]\n{tail(server.log)}")
        raise
    finally:
        try:
            if created and server.process is not None and server.process.poll() is None:
                mwaa = server.client()
                for name in created:
                    try:
                        delete_env(mwaa, name)
                    except Exception as exc:  # the cleanup goes on
                        console.print(f"[red]could not delete {name}: {exc}[/red]")
        finally:
            server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)

    console.print()
    summary(console, bursts, ours, raw, args)
    png = plot(bursts, args.png, args.tasks, args.sleep)
    if png is None:
        console.print("no chart: matplotlib is not installed (pip install matplotlib)")
    else:
        console.print(f"\nworker count over time: {png}")
    console.print(
        f"({os.cpu_count()} CPUs; Python {sys.version.split()[0]}; Airflow {DEFAULT_VERSION}; "
        f"scale-in cool-down {args.cooldown:g} s; bench took {time.monotonic() - started:.0f} s)"
    )
    return 0


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
