"""A real environment acts in AWS with its ExecutionRoleArn, as on MWAA.

``openmwaa serve`` runs with AWS credentials of its own and the S3 bucket store, against
moto's server as IAM, STS and S3 with IAM enforced (aws_roles_support): the role
``reader-x`` may read bucket X, not Y. The environment's DAGs and startup script are in X
(read with the role). Its DAG's tasks call boto3 and S3Hook with no configuration: they
read X, are refused Y, and are the role's session named after the environment. Creating
an environment whose role cannot be assumed, or whose role cannot read its bucket, fails
with a reason the user can act on.

The startup script exports ``AWS_ENDPOINT_URL_S3`` and ``AWS_ENDPOINT_URL_STS`` (moto's):
they stand in for AWS's real endpoints, which tasks would use without them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_roles_support import BUCKET_X, BUCKET_Y, FakeAws, start_moto
from live_server import NETWORK, Server, wait_for, wait_status

NAME = "roles"
CREATE_TIMEOUT = 300
RUN_TIMEOUT = 240

DAG = f"""
import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def allowed():
    import boto3

    s3 = boto3.client("s3")
    body = s3.get_object(Bucket="{BUCKET_X}", Key="data/allowed.txt")["Body"].read()
    assert body == b"read with the execution role", body
    return body.decode()


def hook():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook().read_key("data/allowed.txt", bucket_name="{BUCKET_X}")


def other():
    import boto3
    import botocore.exceptions

    try:
        boto3.client("s3").get_object(Bucket="{BUCKET_Y}", Key="data/other.txt")
    except botocore.exceptions.ClientError as exc:
        code = exc.response["Error"]["Code"]
        assert code == "AccessDenied", code
        return code
    raise RuntimeError("read a bucket the execution role may not read")


def identity():
    import boto3

    arn = boto3.client("sts").get_caller_identity()["Arn"]
    assert arn.endswith(":assumed-role/reader-x/{NAME}"), arn
    return arn


with DAG("roles", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False):
    for task in (allowed, hook, other, identity):
        PythonOperator(task_id=task.__name__, python_callable=task)
"""


@pytest.fixture(scope="module")
def aws() -> Iterator[FakeAws]:
    fake = start_moto()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, airflow_runtimes: Path, aws: FakeAws
) -> Iterator[Server]:
    s3 = aws.client("s3")
    # Not AWS_ENDPOINT_URL itself: the server has it, and what a child's environment holds
    # of the server's own (same name, same value) is removed from it.
    startup = (
        f"#!/bin/bash\nexport AWS_ENDPOINT_URL_S3={aws.url} AWS_ENDPOINT_URL_STS={aws.url}\n"
    ).encode()
    s3.put_object(Bucket=BUCKET_X, Key="dags/roles.py", Body=DAG.encode())
    for bucket in (BUCKET_X, BUCKET_Y):
        s3.put_object(Bucket=bucket, Key="startup.sh", Body=startup)
    data_dir = tmp_path_factory.mktemp("execution-role")
    (data_dir / "runtimes").symlink_to(airflow_runtimes)
    srv = Server(data_dir, ["--bucket-store", "s3"])
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            mp.delenv(name)
        for name, value in aws.server_env().items():
            mp.setenv(name, value)
        srv.start()
    yield srv
    srv.stop()


def _create(mwaa: Any, name: str, role: str, bucket: str) -> None:
    mwaa.create_environment(
        Name=name,
        ExecutionRoleArn=role,
        SourceBucketArn=f"arn:aws:s3:::{bucket}",
        DagS3Path="dags",
        StartupScriptS3Path="startup.sh",
        NetworkConfiguration=NETWORK,
        EnvironmentClass="mw1.micro",
    )


def _rest(mwaa: Any, method: str, path: str, **kwargs: Any) -> Any:
    return mwaa.invoke_rest_api(Name=NAME, Method=method, Path=path, **kwargs)["RestApiResponse"]


def test_tasks_act_with_the_execution_role(server: Server, aws: FakeAws) -> None:
    mwaa = server.client()
    _create(mwaa, NAME, aws.role("reader-x"), BUCKET_X)
    env = wait_status(mwaa, NAME, {"AVAILABLE", "CREATE_FAILED"}, CREATE_TIMEOUT)
    assert env["Status"] == "AVAILABLE", env.get("LastUpdate")

    def has_dag() -> bool:
        dags = _rest(mwaa, "GET", "/dags", QueryParameters={"limit": 100})["dags"]
        return any(d["dag_id"] == "roles" for d in dags)

    wait_for(has_dag, 120, "the DAG mirrored from bucket X with the role", interval=1)
    _rest(mwaa, "PATCH", "/dags/roles", Body={"is_paused": False})
    # (InvokeRestApi takes paths of up to 64 characters: short names.)
    _rest(mwaa, "POST", "/dags/roles/dagRuns", Body={"logical_date": None, "dag_run_id": "r1"})
    run_path = "/dags/roles/dagRuns/r1"

    def finished() -> Any:
        state = _rest(mwaa, "GET", run_path)["state"]
        return state if state in ("success", "failed") else None

    state = wait_for(finished, RUN_TIMEOUT, "the DAG run", interval=1)
    tasks = _rest(mwaa, "GET", f"{run_path}/taskInstances")["task_instances"]
    states = {t["task_id"]: t["state"] for t in tasks}
    if state != "success":
        logs = {
            t: _rest(mwaa, "GET", f"{run_path}/taskInstances/{t}/logs/1")
            for t, s in states.items()
            if s != "success"
        }
        raise AssertionError(f"tasks {states}; logs of the failed ones: {logs}")
    # Each task checked what it got (the content of X, AccessDenied for Y, the role's
    # session named after the environment) and failed otherwise.
    assert states == dict.fromkeys(("allowed", "hook", "other", "identity"), "success")


def test_a_role_that_cannot_be_assumed_fails_the_create(server: Server, aws: FakeAws) -> None:
    mwaa = server.client()
    _create(mwaa, "untrusted", aws.role("untrusting"), BUCKET_X)
    env = wait_status(mwaa, "untrusted", {"AVAILABLE", "CREATE_FAILED"}, CREATE_TIMEOUT)
    assert env["Status"] == "CREATE_FAILED"
    error = env["LastUpdate"]["Error"]
    assert error["ErrorCode"] == "EXECUTION_ROLE", error
    assert aws.role("untrusting") in error["ErrorMessage"]
    assert "AccessDenied" in error["ErrorMessage"]


def test_a_bucket_the_role_cannot_read_is_not_mirrored(server: Server, aws: FakeAws) -> None:
    """The server's own key reads Y; the environment's role does not, so neither does its
    environment."""
    mwaa = server.client()
    _create(mwaa, "otherbucket", aws.role("reader-x"), BUCKET_Y)
    env = wait_status(mwaa, "otherbucket", {"AVAILABLE", "CREATE_FAILED"}, CREATE_TIMEOUT)
    assert env["Status"] == "CREATE_FAILED"
    error = env["LastUpdate"]["Error"]
    assert error["ErrorCode"] == "S3_ACCESS_FAILED", error
    assert "AccessDenied" in error["ErrorMessage"]
