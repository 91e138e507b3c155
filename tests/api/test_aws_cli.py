"""The real ``aws`` CLI and boto3 as users run them: ``openmwaa credentials`` exports,
every ``aws mwaa`` operation, and host prefixes both turned off and served."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from api_support import arn, cleanup, remember
from botocore.config import Config
from live_server import Server, wait_status

BIN = Path(sys.executable).parent
AWS = [str(BIN / "aws")] if (BIN / "aws").exists() else [sys.executable, "-m", "awscli"]


@pytest.fixture(scope="module", autouse=True)
def _delete_our_environments(server: Server, mwaa: Any) -> Any:
    yield
    cleanup(server, mwaa)


def clean_environ() -> dict[str, str]:
    """The test's environment without any AWS configuration of the machine it runs on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


@pytest.fixture(scope="module")
def aws_env(server: Server) -> dict[str, str]:
    """What ``eval "$(openmwaa credentials)"`` exports, for the ``aws`` CLI."""
    creds = server.credentials()
    return clean_environ() | {
        "AWS_ACCESS_KEY_ID": creds["key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_MWAA": server.endpoint,
        "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
    }


def aws(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AWS, "mwaa", *args, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else {}


def failed(done: subprocess.CompletedProcess[str], exception: str) -> str:
    assert done.returncode != 0, done.stdout
    assert f"An error occurred ({exception})" in done.stderr, done.stderr
    return done.stderr


# -- openmwaa credentials + aws, through bash ------------------------------------------


def test_credentials_then_aws_cli(server: Server, mwaa: Any, env_name: str) -> None:
    remember(server, env_name)
    mwaa.create_environment(
        Name=env_name,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
        SourceBucketArn="arn:aws:s3:::my-dags",
        DagS3Path="dags",
        NetworkConfiguration={"SubnetIds": ["subnet-1", "subnet-2"]},
    )
    script = (
        f'exports="$(openmwaa credentials --data-dir {server.data_dir})"\n'
        'echo "$exports"\n'
        'eval "$exports"\n'
        "aws mwaa list-environments --output json\n"
    )
    done = subprocess.run(
        ["bash", "-c", script], env=clean_environ(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    exported, _, listing = done.stdout.partition("{")
    creds = server.credentials()
    assert exported.splitlines() == [
        f"export AWS_ACCESS_KEY_ID={creds['key']}",
        f"export AWS_SECRET_ACCESS_KEY={creds['secret']}",
        "export AWS_DEFAULT_REGION=us-east-1",
        f"export AWS_ENDPOINT_URL_MWAA={server.endpoint}",
        "export AWS_DISABLE_HOST_PREFIX_INJECTION=true",
    ]
    assert env_name in json.loads("{" + listing)["Environments"]


# -- every aws mwaa operation ------------------------------------------------------


def test_every_operation_with_the_aws_cli(
    server: Server, mwaa: Any, aws_env: dict[str, str], env_name: str
) -> None:
    remember(server, env_name)
    env_arn = arn(env_name)
    created = ok(
        aws(
            aws_env,
            "create-environment",
            "--name", env_name,
            "--source-bucket-arn", "arn:aws:s3:::my-dags",
            "--dag-s3-path", "dags",
            "--execution-role-arn", "arn:aws:iam::123456789012:role/x",
            "--network-configuration", "SubnetIds=subnet-1,subnet-2,SecurityGroupIds=sg-1",
            "--tags", "team=data,stage=dev",
        )
    )  # fmt: skip
    assert created == {"Arn": env_arn}
    wait_status(mwaa, env_name, {"AVAILABLE"})
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    no_prefix_off = {k: v for k, v in aws_env.items() if k != "AWS_DISABLE_HOST_PREFIX_INJECTION"}
    no_prefix_off["AWS_MAX_ATTEMPTS"] = "1"  # it cannot connect: do not back off and retry
    calls = {
        "get": ("get-environment", "--name", env_name),
        "tag": ("tag-resource", "--resource-arn", env_arn, "--tags", "tier=gold"),
        "cli-token": ("create-cli-token", "--name", env_name),
        "web-token": ("create-web-login-token", "--name", env_name),
        "metrics": (
            "publish-metrics",
            "--environment-name", env_name,
            "--metric-data",
            json.dumps([{"MetricName": "TasksPending", "Timestamp": timestamp, "Value": 2.0}]),
        ),
        "missing": ("get-environment", "--name", env_name + "x"),
    }  # fmt: skip
    with ThreadPoolExecutor(4) as pool:
        futures = {key: pool.submit(aws, aws_env, *args) for key, args in calls.items()}
        prefixed = pool.submit(aws, no_prefix_off, "list-environments")
        results = {key: future.result() for key, future in futures.items()}

    env = ok(results["get"])["Environment"]
    assert env["Name"] == env_name and env["Status"] == "AVAILABLE"
    assert env["NetworkConfiguration"] == {
        "SubnetIds": ["subnet-1", "subnet-2"],
        "SecurityGroupIds": ["sg-1"],
    }
    assert ok(results["tag"]) == {}
    assert ok(results["cli-token"])["CliToken"]
    web = ok(results["web-token"])
    assert web["WebToken"] and web["IamIdentity"] == "arn:aws:iam::123456789012:user/admin"
    assert ok(results["metrics"]) == {}
    assert "GetEnvironment operation: Environment" in failed(
        results["missing"], "ResourceNotFoundException"
    )
    # without AWS_DISABLE_HOST_PREFIX_INJECTION the CLI goes to api.127.0.0.1
    done = prefixed.result()
    assert done.returncode != 0 and f"api.127.0.0.1:{server.port}" in done.stderr

    with ThreadPoolExecutor(2) as pool:
        untag = pool.submit(
            aws, aws_env, "untag-resource", "--resource-arn", env_arn, "--tag-keys", "team"
        )
        update = pool.submit(
            aws, aws_env, "update-environment", "--name", env_name, "--max-workers", "4"
        )
        assert ok(untag.result()) == {}
        assert ok(update.result()) == {"Arn": env_arn}
    env = wait_status(mwaa, env_name, {"AVAILABLE"})
    assert env["MaxWorkers"] == 4 and env["LastUpdate"]["Status"] == "SUCCESS"
    assert ok(aws(aws_env, "list-tags-for-resource", "--resource-arn", env_arn)) == {
        "Tags": {"stage": "dev", "tier": "gold"}
    }
    assert ok(aws(aws_env, "delete-environment", "--name", env_name)) == {}
    with contextlib.suppress(mwaa.exceptions.ResourceNotFoundException):  # already deleted
        assert mwaa.get_environment(Name=env_name)["Environment"]["Status"] == "DELETING"


# -- host prefixes -------------------------------------------------------------------


class _Stop(Exception):
    pass


def _hosts(client: Any, stop: bool = False) -> list[str]:
    """Record the host of every request the client sends (and optionally send none)."""
    seen: list[str] = []

    def record(request: Any, **_: Any) -> None:
        seen.append(urlsplit(request.url).netloc)
        if stop:
            raise _Stop

    client.meta.events.register("before-send.mwaa", record)
    return seen


def _fresh_client(server: Server, endpoint: str, **config: Any) -> Any:
    creds = server.credentials()
    return boto3.session.Session().client(
        "mwaa",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=creds["key"],
        aws_secret_access_key=creds["secret"],
        config=Config(retries={"max_attempts": 1}, **config),
    )


def test_host_prefix_off_by_environment_variable(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)

    default = _fresh_client(server, server.endpoint)
    seen = _hosts(default, stop=True)
    with pytest.raises(_Stop):
        default.list_environments()
    assert seen == [f"api.127.0.0.1:{server.port}"]  # what the variable turns off

    monkeypatch.setenv("AWS_DISABLE_HOST_PREFIX_INJECTION", "true")
    client = _fresh_client(server, server.endpoint)
    seen = _hosts(client)
    assert isinstance(client.list_environments()["Environments"], list)
    with pytest.raises(client.exceptions.ValidationException):
        client.publish_metrics(EnvironmentName="tNoSuchEnvironment", MetricData=[])
    assert seen == [f"127.0.0.1:{server.port}"] * 2


def test_host_prefix_off_by_config(server: Server) -> None:
    client = _fresh_client(server, server.endpoint, inject_host_prefix=False)
    seen = _hosts(client)
    assert isinstance(client.list_environments()["Environments"], list)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.create_cli_token(Name="tNoSuchEnvironment")
    assert seen == [f"127.0.0.1:{server.port}"] * 2


def test_host_prefixes_are_served(
    server: Server, mwaa: Any, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith("openmwaa.test"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.delenv("AWS_DISABLE_HOST_PREFIX_INJECTION", raising=False)
    remember(server, env_name)
    mwaa.create_environment(
        Name=env_name,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
        SourceBucketArn="arn:aws:s3:::my-dags",
        DagS3Path="dags",
        NetworkConfiguration={"SubnetIds": ["subnet-1", "subnet-2"]},
    )
    wait_status(mwaa, env_name, {"AVAILABLE"})

    client = _fresh_client(server, f"http://openmwaa.test:{server.port}")
    seen = _hosts(client)
    assert client.get_environment(Name=env_name)["Environment"]["Status"] == "AVAILABLE"
    pages = client.get_paginator("list_environments").paginate()
    assert env_name in [n for page in pages for n in page["Environments"]]
    assert client.create_cli_token(Name=env_name)["CliToken"]
    response = client.publish_metrics(
        EnvironmentName=env_name,
        MetricData=[{"MetricName": "m", "Timestamp": datetime.now(UTC), "Value": 1.0}],
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_environment(Name=env_name + "x")
    port = server.port
    assert seen[0] == f"api.openmwaa.test:{port}"
    assert {f"api.openmwaa.test:{port}", f"env.openmwaa.test:{port}"} <= set(seen)
    assert seen[-2:] == [f"ops.openmwaa.test:{port}", f"api.openmwaa.test:{port}"]
