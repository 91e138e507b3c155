"""apache-airflow-providers-amazon's MwaaHook and MwaaTriggerDagRunOperator against openmwaa.

They run with an ``aws_default`` connection pointed at openmwaa and trigger a DAG
in the environment ``ep``: once as a script in the Airflow install the
environments use, once as a task of a DAG in a second environment, ``epcaller``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from endpoint_support import REQUIRED, wait_status
from live_server import wait_for

from openmwaa.runtime.installs import DEFAULT_VERSION, install_key

ENV = "ep"

SCRIPT = """
import json, sys
from airflow.providers.amazon.aws.hooks.mwaa import MwaaHook
from airflow.providers.amazon.aws.operators.mwaa import MwaaTriggerDagRunOperator

hook = MwaaHook(aws_conn_id="aws_default")
listed = hook.invoke_rest_api(env_name="ep", path="/dags", method="GET")
operator = MwaaTriggerDagRunOperator(
    task_id="trigger_remote",
    env_name="ep",
    trigger_dag_id="hello",
    trigger_run_id="from-mwaa-operator",
    logical_date="2025-01-01T00:00:00+00:00",
    conf={"via": "MwaaTriggerDagRunOperator"},
    airflow_version=3,
    aws_conn_id="aws_default",
)
triggered = operator.execute({})
print(json.dumps({"listed": listed, "triggered": triggered}, default=str))
"""


def test_mwaa_hook_and_trigger_operator(
    plane: Any, admin: Any, environment: dict[str, Any], ep_data_dir: Path, tmp_path: Path
) -> None:
    python = ep_data_dir / "runtimes" / install_key(DEFAULT_VERSION, None) / "bin" / "python"
    creds = plane.credentials()
    connection = {
        "conn_type": "aws",
        "login": creds["key"],
        "password": creds["secret"],
        "extra": {
            "region_name": "us-east-1",
            "endpoint_url": plane.endpoint,
            "config_kwargs": {"inject_host_prefix": False, "retries": {"max_attempts": 1}},
        },
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    done = subprocess.run(
        [str(python), "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["listed"]["RestApiStatusCode"] == 200
    assert "hello" in {d["dag_id"] for d in result["listed"]["RestApiResponse"]["dags"]}
    assert result["triggered"]["RestApiResponse"]["dag_run_id"] == "from-mwaa-operator"

    def conf() -> Any:
        run = admin.invoke_rest_api(
            Name=ENV, Path="/dags/hello/dagRuns/from-mwaa-operator", Method="GET"
        )
        return run["RestApiResponse"]["conf"]

    assert wait_for(conf, 10, "the triggered run") == {"via": "MwaaTriggerDagRunOperator"}


CALLER = "epcaller"
CALLER_DAG = """
import pendulum
from airflow.providers.amazon.aws.operators.mwaa import MwaaTriggerDagRunOperator
from airflow.sdk import DAG

with DAG("trigger_ep", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False):
    MwaaTriggerDagRunOperator(
        task_id="trigger_hello",
        env_name="ep",
        trigger_dag_id="hello",
        trigger_run_id="from-environment-epcaller",
        logical_date="{{ dag_run.run_after.isoformat() }}",
        conf={"via": "a DAG in epcaller"},
        airflow_version=3,
        wait_for_completion=True,
        waiter_delay=2,
        waiter_max_attempts=90,
        aws_conn_id="aws_default",
    )
"""


@pytest.fixture
def caller_environment(admin: Any, environment: dict[str, Any], ep_data_dir: Path) -> Iterator[str]:
    """A second environment whose one DAG triggers ``hello`` in ``ep``; deleted afterwards."""
    dags = ep_data_dir / "buckets" / "epcaller-dags" / "dags"
    dags.mkdir(parents=True)
    (dags / "trigger_ep.py").write_text(CALLER_DAG)
    admin.create_environment(
        Name=CALLER,
        **{**REQUIRED, "SourceBucketArn": "arn:aws:s3:::epcaller-dags"},
        EnvironmentClass="mw1.micro",
    )
    try:
        env = wait_status(admin, CALLER, {"AVAILABLE", "CREATE_FAILED"}, timeout=900)
        assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
        yield CALLER
    finally:
        admin.delete_environment(Name=CALLER)

        def gone() -> bool:
            try:
                admin.get_environment(Name=CALLER)
            except admin.exceptions.ResourceNotFoundException:
                return True
            return False

        wait_for(gone, 180, f"{CALLER} to be deleted", interval=1)


def test_trigger_operator_in_one_environment_runs_a_dag_in_another(
    plane: Any, admin: Any, caller_environment: str
) -> None:
    """A DAG in ``epcaller`` triggers ``hello`` in ``ep`` with MwaaTriggerDagRunOperator and
    waits for it; its AWS credentials come from an ``aws_default`` connection that the user
    creates in ``epcaller`` through InvokeRestApi (an access key allowed only InvokeRestApi
    as ``ep``'s Op role), as MWAA users would with their execution role's permissions."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "airflow:InvokeRestApi",
                "Resource": f"arn:aws:airflow:us-east-1:123456789012:role/{ENV}/Op",
            }
        ],
    }
    done = plane.cli("keys", "create", "epcaller-tasks", "--policy", json.dumps(policy))
    key = json.loads(done.stdout)
    extra = {
        "region_name": "us-east-1",
        "endpoint_url": plane.endpoint,
        # The endpoint is an IP address: no api./env. host prefixes (see the README).
        "config_kwargs": {"inject_host_prefix": False, "retries": {"max_attempts": 2}},
    }
    created = admin.invoke_rest_api(
        Name=CALLER,
        Path="/connections",
        Method="POST",
        Body={
            "connection_id": "aws_default",
            "conn_type": "aws",
            "login": key["AccessKeyId"],
            "password": key["SecretAccessKey"],
            "extra": json.dumps(extra),
        },
    )
    assert created["RestApiStatusCode"] == 201, created
    # hello starts paused in ep; the run the operator makes must be able to run.
    admin.invoke_rest_api(Name=ENV, Path="/dags/hello", Method="PATCH", Body={"is_paused": False})

    def caller_dag() -> Any:
        try:
            return admin.invoke_rest_api(Name=CALLER, Path="/dags/trigger_ep", Method="GET")
        except admin.exceptions.RestApiClientException:
            return None

    try:
        wait_for(caller_dag, 120, "trigger_ep in epcaller", interval=1)
    except AssertionError as e:
        errors = admin.invoke_rest_api(Name=CALLER, Path="/importErrors", Method="GET")
        raise AssertionError(f"{e}; import errors: {errors['RestApiResponse']}") from None
    admin.invoke_rest_api(
        Name=CALLER, Path="/dags/trigger_ep", Method="PATCH", Body={"is_paused": False}
    )
    run = "cross-environment"
    admin.invoke_rest_api(
        Name=CALLER,
        Path="/dags/trigger_ep/dagRuns",
        Method="POST",
        Body={"dag_run_id": run, "logical_date": None},
    )

    def state() -> str | None:
        found = admin.invoke_rest_api(
            Name=CALLER, Path=f"/dags/trigger_ep/dagRuns/{run}", Method="GET"
        )["RestApiResponse"]["state"]
        return found if found in ("success", "failed") else None

    caller_state = wait_for(state, 300, "the run in epcaller", interval=2)
    assert caller_state == "success", _task_log(admin, run)
    remote = admin.invoke_rest_api(
        Name=ENV, Path="/dags/hello/dagRuns/from-environment-epcaller", Method="GET"
    )["RestApiResponse"]
    assert remote["state"] == "success"
    assert remote["conf"] == {"via": "a DAG in epcaller"}


def _task_log(admin: Any, run: str) -> str:
    """The operator's log in epcaller, for a failure message."""
    try:
        answer = admin.invoke_rest_api(
            Name=CALLER,
            Path=f"/dags/trigger_ep/dagRuns/{run}/taskInstances/trigger_hello/logs/1",
            Method="GET",
        )
    except Exception as e:  # the log is only a diagnostic
        return f"(no task log: {e})"
    return json.dumps(answer["RestApiResponse"])[-4000:]
