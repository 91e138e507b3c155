"""What tenant isolation costs: the same measures with ``--isolation off`` and ``users``.

When ``openmwaa serve`` runs as root, each environment runs as an OS user of its own in a
cgroup (``--isolation users``, the default); ``--isolation off`` runs them as the server's
user without cgroups. Isolation may make neither figure more than 5 % worse:

1. CreateEnvironment -> AVAILABLE on the embedded default (SQLite, LocalExecutor), warm
   install, as ``bench/lifecycle.py`` measures it (boto3, GetEnvironment every 0.1 s);
   ``--runs`` creates per mode, one server per mode;
2. no-op task throughput in production mode (PostgreSQL and Redis, as
   ``bench/autoscale.py``): ``--noops`` tasks on one Celery worker (mw1.small,
   MinWorkers = MaxWorkers = 1), ``--noop-runs`` counted runs per mode, the median run.
   One environment runs at a time (as in autoscale.py, so the idle one of the other mode
   takes no CPU from it): each counted run gets an environment of its own, made, warmed
   up with one run of the DAG, measured, deleted.

The two modes alternate (off, users, off, users ...) so that the machine's noise falls on
both. Both use the same Airflow install, one other users can reach (the runtime tests'
under /tmp unless ``~/.openmwaa``'s is reachable), built there if missing. Each
environment is checked to run as it should (users: none of its processes as the
server's user, all in its cgroup; off: as the server's user, no cgroup), or the bench
stops. Prints a table (metric, isolation off, isolation users, change) and the README
lines, then removes what it made: environments (their databases, roles and broker keys
go with them), servers, environment users, cgroups, tenant folders, temporary folders.

    .venv/bin/python bench/isolation.py [--quick] [--runs 3] [--noops 100]
        [--noop-runs 3] [--broker redis://127.0.0.1:6379/0]

Run as root (isolation needs it), about 10-15 minutes on 2 cores. ``--quick`` (a smoke
run, about 2 minutes): 1 create per mode, 20 no-ops, 1 run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from rich.console import Console
from rich.table import Table

from openmwaa.runtime.brokers.redis_acl import RespClient, purge_keys
from openmwaa.runtime.celery import check_broker, redis_key_prefix
from openmwaa.runtime.database import pg_name
from openmwaa.runtime.installs import DEFAULT_VERSION, ensure_install
from openmwaa.runtime.orphans import marked_processes, terminate
from openmwaa.runtime.tenancy import placement, users
from openmwaa.runtime.tenancy.cgroups import Cgroups

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from autoscale import (  # noqa: E402
    BROKER,
    BUCKET,
    CLASS,
    SCHEDULERS,
    RunFigures,
    create_env,
    delete_env,
    median_run,
    mwaa_api,
    noop_dag,
    noop_runs,
    tail,
    wait_dag,
    wait_workers_ready,
)
from bench_support import bench_data_dir, shared_runtimes  # noqa: E402
from live_server import POSTGRES_ADMIN, REQUIRED, Server, belongs_under, installs_root  # noqa: E402

MODES = ("off", "users")
"""In the order each round runs them."""
GOAL = 5.0
"""Isolation may make a figure at most this many per cent worse."""
CREATE_TIMEOUT = 600.0


@dataclass
class Side:
    """One server of one isolation mode and what it made."""

    mode: str
    server: Server
    made: list[str] = field(default_factory=list)
    """Every environment created on it (for the cleanup of users and cgroups)."""
    alive: list[str] = field(default_factory=list)
    """Those not deleted yet."""
    broker: str | None = None
    """Production mode: the broker's admin URL (the databases are on POSTGRES_ADMIN)."""
    queues: list[str] = field(default_factory=list)
    """Production mode: the broker queue (and account) of each environment made."""

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir


def reachable_runtimes() -> Path:
    """The shared Airflow installs, in a folder environment users can reach (``make
    install``'s ``~/.openmwaa`` is not: /root is closed), so both modes use the same one."""
    shared = shared_runtimes()
    if shared.is_dir() and placement.traversable(shared):
        return shared
    return installs_root() / "runtimes"


def check_host() -> None:
    """Refuse to measure anything when ``--isolation users`` would not isolate."""
    problem = users.isolation_problem()
    if problem is None:
        cgroups = Cgroups("bench-check")  # only detects, makes nothing
        if not cgroups.available:
            problem = f"no cgroups: {cgroups.problem}"
    if problem is not None:
        raise SystemExit(f"isolation would not be on, nothing to compare: {problem}")


@contextlib.contextmanager
def servers(
    label: str,
    runtimes: Path,
    dags: dict[str, str],
    console: Console,
    broker: str | None = None,
) -> Iterator[dict[str, Side]]:
    """One started server per mode, each on a fresh data dir sharing ``runtimes`` with
    ``dags`` in its bucket, in production mode when a broker is given; everything they
    made removed on the way out."""
    args = ["--airflow-database-url", POSTGRES_ADMIN, "--broker-url", broker] if broker else []
    sides: dict[str, Side] = {}
    try:
        for mode in MODES:
            data_dir, folder = bench_data_dir(
                f"openmwaa-bench-isolation-{label}-{mode}-", runtimes, BUCKET
            )
            for name, text in dags.items():
                (folder / name).write_text(text)
            server = Server(data_dir, [*args, "--isolation", mode])
            sides[mode] = Side(mode, server, broker=broker)
            sides[mode].server.start()
        yield sides
    except BaseException:
        for side in sides.values():
            console.print(f"[red]server log tail, isolation {side.mode}:[/red]")
            console.print(tail(side.server.log), markup=False, highlight=False)
        raise
    finally:
        for side in sides.values():
            try:
                close(side, console)
            except Exception as exc:  # the other side is cleaned up all the same
                console.print(f"[red]cleanup of isolation {side.mode} failed: {exc}[/red]")


def close(side: Side, console: Console) -> None:
    """Delete what is left through the server, stop it, then remove any leftover."""
    try:
        if side.alive and side.server.process is not None and side.server.process.poll() is None:
            mwaa = side.server.client()
            for name in list(side.alive):
                try:
                    if side.broker is not None:  # for the sweep, should the delete fail
                        with contextlib.suppress(Exception):
                            env = mwaa.get_environment(Name=name)["Environment"]
                            side.queues.append(env["CeleryExecutorQueue"].rsplit(":", 1)[-1])
                    delete_env(mwaa, name)
                    side.alive.remove(name)
                except Exception as exc:  # the cleanup goes on
                    console.print(f"[red]could not delete {name}: {exc}[/red]")
    finally:
        side.server.stop()
        data_dir = side.data_dir.resolve()
        terminate([p for p in psutil.process_iter() if belongs_under(p, data_dir)], grace=5)
        cgroups = Cgroups(users.instance_id(data_dir))
        for name in side.made:
            cgroups.remove(name)
        cgroups.remove_instance()
        for user in users.users_of(str(data_dir)):
            try:
                users.remove_user_named(user)
            except users.UserError as exc:
                console.print(f"[red]{exc}[/red]")
        for folder in placement.placements_of(str(data_dir)):
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        if side.broker is not None:
            for what in sweep(side):
                console.print(f"[red]left behind by the server, removed now: {what}[/red]")


def sweep(side: Side) -> list[str]:
    """Remove what deleting the environments should have removed and did not (their
    databases and roles, broker keys and accounts); what was found."""
    assert side.broker is not None
    found = []
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as db:
        for name in map(pg_name, side.made):
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                found.append(f"database {name}")
            if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                db.execute(f'DROP ROLE IF EXISTS "{name}"')
                found.append(f"role {name}")
    if side.broker.startswith("redis"):
        for queue in side.queues:
            if removed := purge_keys(side.broker, redis_key_prefix(queue)):
                found.append(f"{removed} broker keys {redis_key_prefix(queue)}*")
            with RespClient(side.broker) as redis:
                if queue in (redis.call("ACL", "USERS") or []):
                    redis.call("ACL", "DELUSER", queue)
                    found.append(f"broker user {queue}")
    return found


def check_runs_as(side: Side, name: str) -> str:
    """Who the environment's processes run as, checked against the mode; in words."""
    env_dir = (side.data_dir / "environments").resolve() / name
    procs = marked_processes(env_dir)
    owners: set[str] = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            owners.add(proc.username())
    in_cgroup = Cgroups(users.instance_id(side.data_dir.resolve())).pids(name)
    server_user = psutil.Process().username()
    if side.mode == "users":
        ok = bool(owners) and server_user not in owners and bool(in_cgroup)
        ok = ok and {p.pid for p in procs} <= in_cgroup
    else:
        ok = owners == {server_user} and not in_cgroup
    said = f"{len(procs)} processes as {', '.join(sorted(owners))}, {len(in_cgroup)} in a cgroup"
    if not ok:
        raise RuntimeError(f"{name} (isolation {side.mode}) is not as it should be: {said}")
    return said


def timed_create(mwaa: Any, name: str, config: dict[str, Any]) -> float:
    """CreateEnvironment -> GetEnvironment says AVAILABLE, in seconds (polled every 0.1 s,
    as bench/lifecycle.py)."""
    started = time.monotonic()
    mwaa.create_environment(Name=name, **config)
    while (status := mwaa.get_environment(Name=name)["Environment"]["Status"]) == "CREATING":
        if time.monotonic() - started > CREATE_TIMEOUT:
            raise RuntimeError(f"{name} still CREATING after {CREATE_TIMEOUT:.0f} s")
        time.sleep(0.1)
    if status != "AVAILABLE":
        raise RuntimeError(f"{name} is {status}")
    return time.monotonic() - started


# -- the two measures ---------------------------------------------------------------------


def abba(sides: dict[str, Any], n: int) -> list[tuple[str, Any]]:
    """Round ``n``'s order: off then users, then users then off (so that neither mode
    always runs right after the other's clean-up)."""
    order = list(sides.items())
    return order if n % 2 else order[::-1]


def creates(runtimes: Path, runs: int, console: Console) -> dict[str, list[float]]:
    """Section 1: ``runs`` creates per mode on the embedded default, alternated."""
    config = {**REQUIRED, "SourceBucketArn": f"arn:aws:s3:::{BUCKET}"}  # as lifecycle.py
    found: dict[str, list[float]] = {mode: [] for mode in MODES}
    suffix = uuid.uuid4().hex[:4]
    with servers("create", runtimes, {}, console) as sides:
        for n in range(1, runs + 1):
            for mode, side in abba(sides, n):
                mwaa = side.server.client()
                name = f"iso-{mode}-c{n}-{suffix}"
                side.made.append(name)
                side.alive.append(name)
                found[mode].append(timed_create(mwaa, name, config))
                who = check_runs_as(side, name)
                console.print(f"  create {n}, isolation {mode}: {found[mode][-1]:.1f} s ({who})")
                delete_env(mwaa, name)
                side.alive.remove(name)
    return found


@dataclass
class Throughput:
    runs: list[RunFigures] = field(default_factory=list)
    creates: list[float] = field(default_factory=list)
    """CreateEnvironment -> AVAILABLE in production mode (autoscale.py's create_env)."""


def throughputs(
    runtimes: Path, broker: str, noops: int, runs: int, console: Console
) -> dict[str, Throughput]:
    """Section 2: per mode ``runs`` environments (Min = Max = 1), each warmed up once then
    measured once, alternated."""
    found = {mode: Throughput() for mode in MODES}
    suffix = uuid.uuid4().hex[:4]
    dags = {"noop.py": noop_dag(noops)}
    with servers("noop", runtimes, dags, console, broker) as sides:
        for n in range(1, runs + 1):
            for mode, side in abba(sides, n):
                mwaa = side.server.client()
                name = f"iso-{mode}-n{n}-{suffix}"
                side.made.append(name)
                side.alive.append(name)
                started = time.monotonic()
                create_env(mwaa, name, 1, 1)
                found[mode].creates.append(time.monotonic() - started)
                queue = mwaa.get_environment(Name=name)["Environment"]["CeleryExecutorQueue"]
                side.queues.append(queue.rsplit(":", 1)[-1])
                who = check_runs_as(side, name)
                console.print(
                    f"  run {n}, isolation {mode}: {name} AVAILABLE in "
                    f"{found[mode].creates[-1]:.1f} s ({who})"
                )
                api = mwaa_api(mwaa, name)
                wait_workers_ready(side.data_dir / "environments" / name, 1)
                wait_dag(api, "noop")
                found[mode].runs += noop_runs(api, 1, console)
                delete_env(mwaa, name)
                side.alive.remove(name)
    return found


# -- the summary --------------------------------------------------------------------------


def change(off: float, users_: float) -> float:
    return (users_ - off) / off * 100 if off else 0.0


def spread(values: list[float], digits: int) -> str:
    if len(values) < 2:
        return ""
    return f" ({min(values):.{digits}f}–{max(values):.{digits}f})"


def summary(
    console: Console,
    made: dict[str, list[float]],
    noop: dict[str, Throughput],
    args: argparse.Namespace,
) -> None:
    off_c, users_c = (statistics.median(made[m]) for m in MODES)
    off_r, users_r = (median_run(noop[m].runs) for m in MODES)
    off_p, users_p = (statistics.median(noop[m].creates) for m in MODES)
    create_change = change(off_c, users_c)
    noop_change = change(off_r.throughput, users_r.throughput)
    table = Table(title="Tenant isolation: --isolation off vs users (alternated, one run)")
    for column in ("metric", "isolation off", "isolation users", "change (%)"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row(
        f"CreateEnvironment -> AVAILABLE, warm install, SQLite (median of {args.runs})",
        f"{off_c:.1f} s",
        f"{users_c:.1f} s",
        f"{create_change:+.1f}",
    )
    table.add_row("  all runs", *(", ".join(f"{c:.1f}" for c in made[m]) for m in MODES), "")
    table.add_row(
        f"{args.noops} no-op tasks, one Celery worker, tasks/s (median of {args.noop_runs})",
        f"{off_r.throughput:.2f}",
        f"{users_r.throughput:.2f}",
        f"{noop_change:+.1f}",
    )
    table.add_row(
        "  all runs",
        *(", ".join(f"{r.throughput:.2f}" for r in noop[m].runs) for m in MODES),
        "",
    )
    table.add_row(
        f"  CreateEnvironment -> AVAILABLE, {CLASS}, PostgreSQL + Redis (median)",
        f"{off_p:.1f} s",
        f"{users_p:.1f} s",
        f"{change(off_p, users_p):+.1f}",
    )
    console.print(table)
    for what, worse in (("create", create_change), ("no-op throughput", -noop_change)):
        verdict = "within the goal" if worse <= GOAL else "[red]beyond the goal[/red]"
        how = f"{abs(worse):.1f} % {'worse' if worse > 0 else 'better'}"
        console.print(f"{what}: {how} with isolation (goal: at most {GOAL:g} % worse): {verdict}")
    for mode in MODES:
        failed = sum(r.failed for r in noop[mode].runs)
        if failed:
            console.print(f"[red]isolation {mode}: {failed} no-op tasks did not succeed[/red]")

    console.print("\nREADME performance table:")
    rates = {m: [r.throughput for r in noop[m].runs] for m in MODES}
    print(
        f"| CreateEnvironment → AVAILABLE with isolation (`bench/isolation.py`, "
        f"median of {args.runs} per mode, alternated) | users: {users_c:.1f} s"
        f"{spread(made['users'], 1)}, {create_change:+.1f} % | isolation off: {off_c:.1f} s"
        f"{spread(made['off'], 1)} | ≤ {GOAL:g} % slower |"
    )
    print(
        f"| {args.noops} no-op tasks on one Celery worker with isolation, throughput "
        f"(median of {args.noop_runs} per mode, alternated) | users: "
        f"{users_r.throughput:.2f} tasks/s{spread(rates['users'], 2)}, {noop_change:+.1f} % | "
        f"isolation off: {off_r.throughput:.2f} tasks/s{spread(rates['off'], 2)} | "
        f"≤ {GOAL:g} % fewer |"
    )


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 create, 20 no-ops, 1 run")
    parser.add_argument("--runs", type=int, help="creates per mode (default 3)")
    parser.add_argument("--noops", type=int, help="no-op tasks per run (default 100)")
    parser.add_argument("--noop-runs", type=int, help="counted no-op runs per mode (3)")
    parser.add_argument("--broker", default=BROKER)
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.noops = args.noops or (20 if args.quick else 100)
    args.noop_runs = args.noop_runs or (1 if args.quick else 3)
    console = Console() if sys.stdout.isatty() else Console(width=130)
    started = time.monotonic()
    check_host()
    check_broker(args.broker)
    with psycopg.connect(POSTGRES_ADMIN, connect_timeout=5) as conn:
        conn.execute("SELECT 1")

    runtimes = reachable_runtimes()
    install = ensure_install(
        runtimes.parent, DEFAULT_VERSION, None, lambda s: console.print(f"  {s}")
    )
    console.print(f"Airflow install (both modes): {install}")
    console.print(f"1. CreateEnvironment -> AVAILABLE, {args.runs} per mode")
    made = creates(runtimes, args.runs, console)
    console.print(f"2. {args.noops} no-op tasks on one Celery worker, {args.noop_runs} per mode")
    noop = throughputs(runtimes, args.broker, args.noops, args.noop_runs, console)

    console.print()
    summary(console, made, noop, args)
    console.print(
        f"({os.cpu_count()} CPUs; Python {sys.version.split()[0]}; Airflow {DEFAULT_VERSION}; "
        f"{CLASS}, {SCHEDULERS} schedulers with Celery; "
        f"bench took {time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
