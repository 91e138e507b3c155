"""Helpers of the endpoint tests (a uniquely named module, imported as a plain module)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from live_server import REQUIRED, Server, wait_status

__all__ = ["REQUIRED", "Server", "wait_status"]


BIN = Path(sys.executable).parent
AWS = [str(BIN / "aws")] if (BIN / "aws").exists() else [sys.executable, "-m", "awscli"]

HELLO_DAG = """
import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def show(**context):
    print("conf", context["dag_run"].conf)


with DAG("hello", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False):
    PythonOperator(task_id="show", python_callable=show)
"""


def client_for(server: Any, key: dict[str, str]) -> Any:
    return boto3.client(
        "mwaa",
        region_name="us-east-1",
        endpoint_url=server.endpoint,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        config=Config(inject_host_prefix=False, retries={"max_attempts": 1}),
    )


def aws_env(server: Any) -> dict[str, str]:
    """What ``eval "$(openmwaa credentials)"`` exports, without the machine's AWS config."""
    creds = server.credentials()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWS_ACCESS_KEY_ID": creds["key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_MWAA": server.endpoint,
        "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
    }


def aws(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [*AWS, "mwaa", *args, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else {}


def curl_cli(hostname: str, token: str, command: str) -> tuple[int, dict[str, Any]]:
    """POST the command to /aws_mwaa/cli with curl, as MWAA's documentation does."""
    done = subprocess.run(
        [
            "curl", "-sS", "-X", "POST", f"http://{hostname}/aws_mwaa/cli",
            "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: text/plain",
            "--data-raw", command, "-w", "\n%{http_code}",
        ],
        capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def decoded(answer: dict[str, Any]) -> tuple[str, str]:
    return (
        base64.b64decode(answer["stdout"]).decode(),
        base64.b64decode(answer["stderr"]).decode(),
    )


def available(client: Any, name: str = "ep") -> None:
    """Wait out a moment of UNAVAILABLE: on this busy 2-core machine a slow health check of
    the API server flips the status for a few seconds, and tokens are minted only while
    the environment is AVAILABLE (as MWAA does)."""
    wait_status(client, name, {"AVAILABLE"}, timeout=120)
