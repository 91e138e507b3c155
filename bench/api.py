"""GetEnvironment and ListEnvironments latency at a fixed request rate.

Starts ``openmwaa serve`` (SQLite, the test backend: the API path is the same
for any backend) in its own process, creates a few environments, then sends
SigV4-signed requests from this process at a fixed rate (open loop: a slow
answer delays nothing, and latency counts from the moment a request was due)
over keep-alive connections. Prints p50/p99 latency and achieved throughput.

    .venv/bin/python bench/api.py [--rate 200] [--seconds 15]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from live_server import REQUIRED, Server, wait_status  # noqa: E402

ENVIRONMENTS = 10


def signed(server: Server, method: str, path: str) -> tuple[str, str, dict[str, str]]:
    creds = server.credentials()
    request = AWSRequest(method=method, url=f"{server.endpoint}{path}", data=b"")
    SigV4Auth(Credentials(creds["key"], creds["secret"]), "airflow", "us-east-1").add_auth(request)
    return method, path, dict(request.headers)


def drive(
    server: Server, requests: list[tuple[str, str, dict[str, str]]], rate: float, seconds: float,
    threads: int = 2,
) -> tuple[list[float], int, float]:  # fmt: skip
    """Send requests round-robin at ``rate``/s; returns latencies (ms), errors, wall time."""
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = time.perf_counter() + 0.2

    def worker(slot: int) -> None:
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        mine: list[float] = []
        failed = 0
        for i in range(slot, total, threads):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            method, path, headers = requests[i % len(requests)]
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append((time.perf_counter() - due) * 1000)
            failed += response.status != 200
        conn.close()
        with lock:
            latencies.extend(mine)
            errors += failed

    pool = [threading.Thread(target=worker, args=(j,)) for j in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies, errors, time.perf_counter() - start


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000)[int(p * 10) - 1]


def main() -> None:
    sys.setswitchinterval(0.0005)  # the client's threads must not add GIL waits to latency
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), ["--backend", "test"])
        server.start()
        try:
            client = server.client()
            for i in range(ENVIRONMENTS):
                client.create_environment(Name=f"bench{i}", **REQUIRED)
            for i in range(ENVIRONMENTS):
                wait_status(client, f"bench{i}", {"AVAILABLE"})
            cases: dict[str, list[Any]] = {
                "GetEnvironment": [
                    signed(server, "GET", f"/environments/bench{i}") for i in range(ENVIRONMENTS)
                ],
                "ListEnvironments": [signed(server, "GET", "/environments?MaxResults=25")],
            }
            drive(server, cases["GetEnvironment"], args.rate, 2)  # warm-up
            table = Table(
                title=f"MWAA API at {args.rate:.0f} requests/s, {args.seconds:.0f} s each"
            )
            for column in ("operation", "requests", "errors", "throughput /s", "p50 ms", "p99 ms"):
                table.add_column(column, justify="right")
            for name, requests in cases.items():
                latencies, errors, wall = drive(server, requests, args.rate, args.seconds)
                table.add_row(
                    name,
                    str(len(latencies)),
                    str(errors),
                    f"{len(latencies) / wall:.0f}",
                    f"{statistics.median(latencies):.2f}",
                    f"{percentile(latencies, 99):.2f}",
                )
            console.print(table)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
