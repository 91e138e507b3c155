"""InvokeRestApi with the aws CLI and boto3, as the caller's Airflow role."""

from __future__ import annotations

from typing import Any

import pytest
from endpoint_support import aws, aws_env
from live_server import wait_for

ENV = "ep"


def test_list_trigger_and_read_back_with_aws_cli(plane: Any, environment: dict[str, Any]) -> None:
    env = aws_env(plane)
    listed = aws(env, "invoke-rest-api", "--name", ENV, "--path", "/dags", "--method", "GET")
    assert listed["RestApiStatusCode"] == 200
    assert "hello" in {d["dag_id"] for d in listed["RestApiResponse"]["dags"]}
    unpaused = aws(
        env, "invoke-rest-api", "--name", ENV, "--path", "/dags/hello", "--method", "PATCH",
        "--body", '{"is_paused": false}',
    )  # fmt: skip
    assert unpaused["RestApiResponse"]["is_paused"] is False
    triggered = aws(
        env, "invoke-rest-api", "--name", ENV, "--path", "/dags/hello/dagRuns",
        "--method", "POST", "--body", '{"logical_date": null, "conf": {"via": "aws-cli"}}',
    )  # fmt: skip
    assert triggered["RestApiStatusCode"] == 200
    run_id = triggered["RestApiResponse"]["dag_run_id"]

    def state() -> str | None:
        run = aws(
            env, "invoke-rest-api", "--name", ENV, "--method", "GET",
            "--path", f"/dags/hello/dagRuns/{run_id}",
        )  # fmt: skip
        assert run["RestApiResponse"]["conf"] == {"via": "aws-cli"}
        found = run["RestApiResponse"]["state"]
        return found if found in ("success", "failed") else None

    assert wait_for(state, 120, f"run {run_id} to finish", interval=2) == "success"
    listed = aws(
        env, "invoke-rest-api", "--name", ENV, "--path", "/dags/hello/dagRuns", "--method", "GET",
        "--query-parameters", '{"limit": 100}',
    )  # fmt: skip
    assert run_id in {r["dag_run_id"] for r in listed["RestApiResponse"]["dag_runs"]}


def test_viewer_may_read_but_not_write(viewer: Any) -> None:
    assert viewer.invoke_rest_api(Name=ENV, Path="/dags", Method="GET")["RestApiStatusCode"] == 200
    with pytest.raises(viewer.exceptions.RestApiClientException) as excinfo:
        viewer.invoke_rest_api(
            Name=ENV, Path="/dags/hello/dagRuns", Method="POST", Body={"logical_date": None}
        )
    error = excinfo.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["RestApiStatusCode"] == 403
    assert error["RestApiResponse"]["detail"]


def test_airflow_errors_become_rest_api_exceptions(admin: Any, environment: dict[str, Any]) -> None:
    with pytest.raises(admin.exceptions.RestApiClientException) as excinfo:
        admin.invoke_rest_api(Name=ENV, Path="/dags/no_such_dag", Method="GET")
    assert excinfo.value.response["RestApiStatusCode"] == 404
    with pytest.raises(admin.exceptions.RestApiClientException) as excinfo:
        admin.invoke_rest_api(Name=ENV, Path="/dags/hello/dagRuns", Method="POST", Body={"x": 1})
    assert excinfo.value.response["RestApiStatusCode"] == 422


def test_no_role_is_access_denied_with_mwaa_hook_wording(plane: Any, environment: Any) -> None:
    import json

    from endpoint_support import client_for

    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "airflow:Get*", "Resource": "*"}],
    }
    done = plane.cli("keys", "create", "norole", "--policy", json.dumps(policy))
    client = client_for(plane, json.loads(done.stdout))
    with pytest.raises(client.exceptions.AccessDeniedException) as excinfo:
        client.invoke_rest_api(Name=ENV, Path="/dags", Method="GET")
    assert "Airflow role" in excinfo.value.response["Error"]["Message"]


def test_concurrent_calls_share_the_event_loop(admin: Any, environment: dict[str, Any]) -> None:
    """InvokeRestApi waits on Airflow on the server's event loop: calls in flight together
    each get their own answer."""
    from concurrent.futures import ThreadPoolExecutor

    paths = ["/dags/hello", "/dags/no_such_dag", "/version", "/dags"] * 6

    def call(path: str) -> tuple[int, str]:
        try:
            answer = admin.invoke_rest_api(Name=ENV, Path=path, Method="GET")
        except admin.exceptions.RestApiClientException as e:
            return int(e.response["RestApiStatusCode"]), ""
        document = answer["RestApiResponse"]
        return int(answer["RestApiStatusCode"]), document.get("dag_id") or sorted(document)[0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, paths))
    assert answers == [(200, "hello"), (404, ""), (200, "git_version"), (200, "dags")] * 6


def test_the_public_role_is_access_denied(plane: Any, environment: Any) -> None:
    import json

    from endpoint_support import client_for

    role = f"arn:aws:airflow:us-east-1:123456789012:role/{ENV}/Public"
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "airflow:InvokeRestApi", "Resource": role}],
    }
    done = plane.cli("keys", "create", "public-only", "--policy", json.dumps(policy))
    client = client_for(plane, json.loads(done.stdout))
    with pytest.raises(client.exceptions.AccessDeniedException) as excinfo:
        client.invoke_rest_api(Name=ENV, Path="/dags", Method="GET")
    assert "Public" in excinfo.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("field", "call"),
    [
        ("QueryParameters", {"Path": "/dags", "QueryParameters": ["limit", 10]}),
        ("QueryParameters", {"Path": "/dags", "QueryParameters": {"limit": {"a": 1}}}),
        ("QueryParameters", {"Path": "/dags", "QueryParameters": {"tags": [{"a": 1}]}}),
        ("Path", {"Path": "/dags\r\nX-Injected: 1"}),
        ("Path", {"Path": "/dags\x00"}),
    ],
)
def test_inputs_airflow_cannot_be_sent_are_validation_errors(
    admin: Any, environment: dict[str, Any], field: str, call: dict[str, Any]
) -> None:
    with pytest.raises(admin.exceptions.ValidationException) as excinfo:
        admin.invoke_rest_api(Name=ENV, Method="GET", **call)
    assert field in excinfo.value.response["Error"]["Message"]
