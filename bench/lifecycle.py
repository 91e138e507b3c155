"""Environment lifecycle benchmark through the MWAA API, against Airflow started by hand.

Prints one table measured in one run:
- CreateEnvironment -> GetEnvironment says AVAILABLE, with a warm install, several
  runs (a live ``openmwaa serve`` with the local backend, driven by boto3);
- the raw baseline: the same Airflow install started by hand (``airflow db migrate``
  then api-server, scheduler, dag-processor, triggerer in a fresh AIRFLOW_HOME)
  until /api/v2/monitor/health is all healthy;
- DAG file written to the bucket -> visible in the REST API (p50/p95 over 20 files);
- idle memory (PSS summed over the process tree; RSS where PSS is unavailable)
  of an environment vs the raw baseline, both at the same parallelism.

Usage: .venv/bin/python bench/lifecycle.py [--data-dir /tmp/openmwaa-bench] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from openmwaa.runtime.installs import DEFAULT_VERSION, ensure_install
from openmwaa.runtime.ports import port_is_free
from openmwaa.runtime.supervisor import marked_processes, terminate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_support import start_component  # noqa: E402
from live_server import REQUIRED, Server  # noqa: E402

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
SETTLE = 30.0
"""Seconds an environment idles after becoming healthy before its memory is measured."""


def tree_memory(roots: list[psutil.Process]) -> tuple[int, str]:
    procs: dict[int, psutil.Process] = {}
    for root in roots:
        procs[root.pid] = root
        for child in root.children(recursive=True):
            procs[child.pid] = child
    total, kind = 0, "PSS"
    for proc in procs.values():
        try:
            info = proc.memory_full_info()
            total += getattr(info, "pss", info.rss)
            kind = "PSS" if hasattr(info, "pss") else "RSS"
        except psutil.Error:
            continue
    return total, kind


def healthy(url: str) -> bool:
    try:
        report = httpx.get(f"{url}/api/v2/monitor/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    keys = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all(report.get(k, {}).get("status") == "healthy" for k in keys)


def free_ports(count: int, start: int = 49100) -> list[int]:
    ports: list[int] = []
    port = start
    while len(ports) < count:
        if port_is_free(port):
            ports.append(port)
        port += 1
    return ports


def raw_baseline(install: Path, parallelism: int) -> tuple[float, int]:
    """(seconds to all-healthy, idle memory bytes) of Airflow started by hand."""
    home = Path(tempfile.mkdtemp(prefix="raw-airflow-"))
    api, wlog, tlog = free_ports(3)
    env = {
        "PATH": f"{install / 'bin'}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", str(home)),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(wlog),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(tlog),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
    }
    airflow = str(install / "bin" / "airflow")
    procs: list[psutil.Process] = []
    started = time.monotonic()
    try:
        subprocess.run(
            [airflow, "db", "migrate"], env=env, cwd=home, check=True, capture_output=True
        )
        for component in COMPONENTS:
            procs.append(start_component([airflow, component], env, home, component))
        while not healthy(f"http://127.0.0.1:{api}"):
            if time.monotonic() - started > 300:
                raise RuntimeError(f"raw Airflow not healthy after 300s; logs in {home}")
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        time.sleep(SETTLE)
        memory, _ = tree_memory(procs)
        return elapsed, memory
    finally:
        terminate(procs, grace=20)
        shutil.rmtree(home, ignore_errors=True)


def visible(client: object, name: str, dag_id: str) -> bool:
    try:
        client.invoke_rest_api(Name=name, Method="GET", Path=f"/dags/{dag_id}")  # type: ignore[attr-defined]
    except client.exceptions.RestApiClientException:  # type: ignore[attr-defined]
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/openmwaa-bench"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dags", type=int, default=20)
    args = parser.parse_args()
    data_dir: Path = args.data_dir
    shutil.rmtree(data_dir / "environments", ignore_errors=True)
    for leftover in ("ports.json", "openmwaa.db", "openmwaa.db-wal", "openmwaa.db-shm"):
        (data_dir / leftover).unlink(missing_ok=True)  # a fresh control plane each run
    bucket = data_dir / "buckets" / "bench" / "dags"
    shutil.rmtree(bucket, ignore_errors=True)
    bucket.mkdir(parents=True)

    t = time.monotonic()
    install = ensure_install(data_dir, DEFAULT_VERSION, None, lambda s: print(f"  {s}"))
    install_s = time.monotonic() - t
    server = Server(data_dir, [])
    server.start()
    client = server.client()
    config = {**REQUIRED, "SourceBucketArn": "arn:aws:s3:::bench"}  # mw1.small: parallelism 50

    def processes(name: str) -> list[psutil.Process]:
        return marked_processes(data_dir / "environments" / name)

    try:
        # 1. CreateEnvironment -> AVAILABLE (warm install)
        creates = []
        for i in range(args.runs):
            name = f"bench{i}"
            t = time.monotonic()
            client.create_environment(Name=name, **config)
            while (status := client.get_environment(Name=name)["Environment"]["Status"]) in (
                "CREATING",
            ):
                time.sleep(0.1)
            if status != "AVAILABLE":
                raise RuntimeError(f"{name} is {status}; see {server.log}")
            creates.append(time.monotonic() - t)
            print(f"  create #{i + 1}: {creates[-1]:.1f}s")
            if i < args.runs - 1:
                client.delete_environment(Name=name)
                while processes(name):
                    time.sleep(0.2)
        keep = f"bench{args.runs - 1}"

        # 2. idle memory of the environment (after SETTLE s idle)
        time.sleep(SETTLE)
        env_mem, kind = tree_memory(processes(keep))

        # 3. DAG file written -> visible in the REST API (InvokeRestApi, as a user would)
        latencies = []
        for i in range(args.dags):
            dag_id = f"bench_dag_{i}"
            text = (
                "import pendulum\nfrom airflow.sdk import DAG\n"
                "from airflow.providers.standard.operators.empty import EmptyOperator\n"
                f"with DAG('{dag_id}', schedule=None, start_date=pendulum.datetime(2024, 1, 1)):\n"
                "    EmptyOperator(task_id='noop')\n"
            )
            tmp = bucket / f".{dag_id}.tmp"
            tmp.write_text(text)
            t = time.monotonic()
            os.replace(tmp, bucket / f"{dag_id}.py")
            while not visible(client, keep, dag_id):
                if time.monotonic() - t > 120:
                    raise RuntimeError(f"{dag_id} not visible after 120s")
                time.sleep(0.05)
            latencies.append(time.monotonic() - t)
        client.delete_environment(Name=keep)
        while processes(keep):
            time.sleep(0.2)
    finally:
        server.stop()

    # 4. the raw baseline
    raws = []
    raw_mem = 0
    for i in range(args.runs):
        elapsed, raw_mem = raw_baseline(install, parallelism=5 * 10)
        raws.append(elapsed)
        print(f"  raw #{i + 1}: {elapsed:.1f}s")

    p50 = statistics.median(latencies)
    p95 = sorted(latencies)[max(0, round(0.95 * len(latencies)) - 1)]
    mib = 1024 * 1024
    rows = [
        ("install Airflow (this run; warm = already built)", f"{install_s:.1f} s", ""),
        (
            "CreateEnvironment -> AVAILABLE, warm install (median)",
            f"{statistics.median(creates):.1f} s",
            "<= 15 s",
        ),
        ("  all runs", ", ".join(f"{c:.1f}" for c in creates), ""),
        (
            "raw baseline: db migrate + 4 components -> healthy (median)",
            f"{statistics.median(raws):.1f} s",
            "",
        ),
        ("  all runs", ", ".join(f"{r:.1f}" for r in raws), ""),
        (f"DAG file -> visible in REST API, p50 ({len(latencies)} files)", f"{p50:.1f} s", ""),
        (
            f"DAG file -> visible in REST API, p95 ({len(latencies)} files)",
            f"{p95:.1f} s",
            "<= 5 s",
        ),
        (f"idle memory, environment ({kind}, parallelism 50)", f"{env_mem / mib:.0f} MiB", ""),
        (f"idle memory, raw baseline ({kind}, parallelism 50)", f"{raw_mem / mib:.0f} MiB", ""),
        ("idle memory ratio environment / raw", f"{env_mem / raw_mem:.2f}x", "<= 1.1x"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'measure'.ljust(width)}  {'value':>18}  goal")
    print(f"{'-' * width}  {'-' * 18}  -------")
    for name, value, goal in rows:
        print(f"{name.ljust(width)}  {value:>18}  {goal}")
    print(
        f"\n(2 cores? {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
        f"Airflow {DEFAULT_VERSION}; settle {SETTLE:.0f} s before memory)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
