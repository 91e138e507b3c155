"""InvokeRestApi latency against calling the same Airflow REST API directly, in one run.

Starts ``openmwaa serve`` with the local backend (the Airflow install is shared
with the runtime tests' data dir when present), creates one environment, then
alternates, one request at a time over keep-alive connections, in a new random
order each round:

- ``direct``: ``GET /api/v2/dags`` on the environment's API server (loopback),
  with the Admin user's JWT;
- ``InvokeRestApi``: boto3 ``invoke_rest_api(Path="/dags", Method="GET")``
  (SigV4 signing, the MWAA API, the role check, the call, the answer);
- ``endpoint proxy``: the same GET through the environment's endpoint.

Every path reads the answer as JSON. Prints p50/p99 per path, the ratio to
``direct`` (goal: InvokeRestApi p50 <= 1.2x) and the machine's load average: on
a busy machine every extra process hop costs more, so the ratios grow.

    .venv/bin/python bench/endpoint.py [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_support import bench_data_dir  # noqa: E402
from live_server import REQUIRED, Server, installs_root, wait_status  # noqa: E402

ENV = "bench"
DAG = """
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator
for i in range(10):
    with DAG(f"bench_{i}", schedule=None, start_date=pendulum.datetime(2024, 1, 1)):
        EmptyOperator(task_id="noop")
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    console = Console()
    data_dir, dags = bench_data_dir(
        "openmwaa-bench-endpoint-", installs_root() / "runtimes", "bench"
    )
    (dags / "bench.py").write_text(DAG)
    server = Server(data_dir, ["--backend", "local"])
    server.start()
    try:
        mwaa = server.client()
        mwaa.create_environment(
            Name=ENV,
            **{**REQUIRED, "SourceBucketArn": "arn:aws:s3:::bench"},
            EnvironmentClass="mw1.micro",
        )
        env = wait_status(mwaa, ENV, {"AVAILABLE", "CREATE_FAILED"}, timeout=900)
        assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
        endpoint = env["WebserverUrl"]
        api_port = json.loads((data_dir / "ports.json").read_text())[ENV]["api"]
        direct_base = f"http://127.0.0.1:{api_port}"
        token = mwaa.create_web_login_token(Name=ENV)["WebToken"]
        login = httpx.post(f"{endpoint}/pluginsv2/aws_mwaa/login", data={"token": token})
        jwt = login.cookies["_token"]
        auth = {"Authorization": f"Bearer {jwt}"}
        direct = httpx.Client(base_url=direct_base, headers=auth, timeout=30)
        proxied = httpx.Client(base_url=endpoint, headers=auth, timeout=30)

        def wait_dags() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if direct.get("/api/v2/dags").json().get("total_entries", 0) >= 10:
                    return
                time.sleep(1)

        wait_dags()
        creds = server.credentials()
        signer = SigV4Auth(Credentials(creds["key"], creds["secret"]), "airflow", "us-east-1")
        raw = httpx.Client(base_url=server.endpoint, timeout=30)
        payload = json.dumps({"Path": "/dags", "Method": "GET"}).encode()

        def read(response: httpx.Response) -> Any:
            return response.raise_for_status().json()

        def signed_invoke() -> None:
            request = AWSRequest(
                method="POST",
                url=f"{server.endpoint}/restapi/{ENV}",
                data=payload,
                headers={"Content-Type": "application/json"},
            )
            signer.add_auth(request)
            read(raw.post(f"/restapi/{ENV}", content=payload, headers=dict(request.headers)))

        # Every path reads the answer as JSON, as boto3 does for InvokeRestApi.
        paths: dict[str, Callable[[], Any]] = {
            "direct (Airflow API server)": lambda: read(direct.get("/api/v2/dags")),
            "InvokeRestApi (boto3)": lambda: mwaa.invoke_rest_api(
                Name=ENV, Path="/dags", Method="GET"
            ),
            "InvokeRestApi (SigV4-signed HTTP)": signed_invoke,
            "endpoint proxy": lambda: read(proxied.get("/api/v2/dags")),
        }
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(20):  # warm-up: connections, caches, the JWT
            for call in paths.values():
                call()
        load_before = os.getloadavg()[0]
        order = random.Random(0)
        for _ in range(args.requests):
            # A new order each round: no path always follows the same other one.
            for name, call in order.sample(list(paths.items()), len(paths)):
                started = time.perf_counter()
                call()
                samples[name].append((time.perf_counter() - started) * 1000)
        base = statistics.median(samples["direct (Airflow API server)"])
        table = Table(title=f"GET /dags, {args.requests} requests each, interleaved (ms)")
        for column in ("path", "p50", "p99", "p50 / direct"):
            table.add_column(column, justify="right" if column != "path" else "left")
        for name, values in samples.items():
            p50 = statistics.median(values)
            table.add_row(
                name, f"{p50:.2f}", f"{percentile(values, 0.99):.2f}", f"{p50 / base:.2f}x"
            )
        console.print(table)
        load_after = os.getloadavg()[0]
        console.print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after")
        # The bench keeps about one core busy itself (one request at a time).
        if max(load_before, load_after) > 0.75 * (os.cpu_count() or 1):
            console.print("[yellow]a busy machine: the ratios are noisy, rerun when it is quiet")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
