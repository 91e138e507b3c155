"""``openmwaa demo``: a running server with one environment, for a first look."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from rich.console import Console

from openmwaa.server import ADMIN_KEY_FILE, SERVER_FILE
from openmwaa.settings import Settings

DEMO_ENVIRONMENT = "demo"
DEMO_BUCKET = "demo-dags"
EXAMPLE_DAG = Path(__file__).with_name("examples") / "hello_openmwaa.py"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_server(settings: Settings, console: Console) -> None:
    """Start ``openmwaa serve`` in the background unless one already answers."""
    if _listening("127.0.0.1", settings.port):
        console.print(f"openmwaa is already serving on {settings.endpoint_url}")
        return
    log = settings.data_dir / "serve.log"  # the data dir exists already, owner-only
    command = [
        sys.executable, "-m", "openmwaa", "serve",
        "--data-dir", str(settings.data_dir), "--port", str(settings.port),
    ]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    (settings.data_dir / "serve.pid").write_text(str(process.pid))
    with console.status("starting openmwaa serve"):
        for _ in range(300):
            if (
                _listening("127.0.0.1", settings.port)
                and (settings.data_dir / SERVER_FILE).exists()
            ):
                break
            if process.poll() is not None:
                # e.g. another server holds the data dir: its last line says which
                last = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise SystemExit(f"openmwaa serve exited: {' '.join(last)} (see {log})")
            time.sleep(0.2)
    console.print(f"openmwaa serving on {settings.endpoint_url} (pid {process.pid}, log {log})")


def run_demo(settings: Settings, console: Console) -> int:
    ensure_server(settings, console)
    key = json.loads((settings.data_dir / ADMIN_KEY_FILE).read_text())
    client = boto3.client(
        "mwaa",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        config=Config(inject_host_prefix=False),
    )
    dags = settings.data_dir / "buckets" / DEMO_BUCKET / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE_DAG, dags / EXAMPLE_DAG.name)
    if DEMO_ENVIRONMENT not in client.list_environments()["Environments"]:
        client.create_environment(
            Name=DEMO_ENVIRONMENT,
            SourceBucketArn=f"arn:aws:s3:::{DEMO_BUCKET}",
            DagS3Path="dags",
            ExecutionRoleArn=f"arn:aws:iam::{settings.account_id}:role/openmwaa-demo",
            NetworkConfiguration={
                "SubnetIds": ["subnet-demo-a", "subnet-demo-b"],
                "SecurityGroupIds": ["sg-demo"],
            },
            EnvironmentClass="mw1.micro",
        )
    started = time.monotonic()
    with console.status("") as status:
        while True:
            env = client.get_environment(Name=DEMO_ENVIRONMENT)["Environment"]
            status.update(
                f"environment {DEMO_ENVIRONMENT}: {env['Status']} "
                f"({time.monotonic() - started:.0f} s)"
            )
            if env["Status"] not in ("CREATING", "UPDATING"):
                break
            time.sleep(0.5)
    if env["Status"] != "AVAILABLE":
        error = env.get("LastUpdate", {}).get("Error", {})
        console.print(
            f"[red]{DEMO_ENVIRONMENT} is {env['Status']}[/]: {error.get('ErrorMessage', '')}"
        )
        return 1
    console.print(
        f"[green]Environment {DEMO_ENVIRONMENT} is AVAILABLE[/] "
        f"in {time.monotonic() - started:.0f} s; Airflow at {env.get('WebserverUrl')}\n"
        f"DAG files: {dags}\n"
        f'Try: eval "$(openmwaa credentials --data-dir {settings.data_dir})"; '
        f"aws mwaa get-environment --name {DEMO_ENVIRONMENT}"
    )
    return 0
