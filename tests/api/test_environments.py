"""Environments through boto3 against the live server: every operation at its method and
URI, MWAA's defaults, the rules beyond the model, tags, paging and the state machine
(with the test backend's real processes)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from api_support import (  # noqa: F401 (fixtures)
    ACCOUNT,
    arn,
    create_env,
    env_dir,
    env_process,
    error_code,
    error_message,
    held_in_creating,
    wait_no_process,
)
from live_server import NETWORK, REQUIRED, Server, wait_status

pytestmark = pytest.mark.usefixtures("delete_module_environments")


def available(server: Server, mwaa: Any, name: str, **fields: Any) -> dict[str, Any]:
    create_env(server, mwaa, name, **fields)
    return wait_status(mwaa, name, {"AVAILABLE"})


# -- every operation at its method and URI -------------------------------------


def test_every_operation_at_its_method_and_uri(server: Server, env_name: str) -> None:
    client = server.client()
    sent: list[tuple[str, str, str]] = []

    def record(request: Any, **_: Any) -> None:
        url = urlsplit(request.url)
        sent.append((request.method, url.path, url.query))

    client.meta.events.register("before-send.mwaa", record)
    env_arn = arn(env_name)
    quoted = "arn%3Aaws%3Aairflow%3Aus-east-1%3A123456789012%3Aenvironment%2F" + env_name
    assert create_env(server, client, env_name, Tags={"a": "1"}) == env_arn
    assert sent == [("PUT", f"/environments/{env_name}", "")]
    wait_status(client, env_name, {"AVAILABLE"})
    calls: list[tuple[Any, dict[str, Any], tuple[str, str, str]]] = [
        (client.get_environment, {"Name": env_name}, ("GET", f"/environments/{env_name}", "")),
        (client.list_environments, {}, ("GET", "/environments", "")),
        (client.list_environments, {"MaxResults": 2}, ("GET", "/environments", "MaxResults=2")),
        (
            client.tag_resource,
            {"ResourceArn": env_arn, "Tags": {"b": "2"}},
            ("POST", f"/tags/{quoted}", ""),
        ),
        (
            client.untag_resource,
            {"ResourceArn": env_arn, "tagKeys": ["a"]},
            ("DELETE", f"/tags/{quoted}", "tagKeys=a"),
        ),
        (client.list_tags_for_resource, {"ResourceArn": env_arn}, ("GET", f"/tags/{quoted}", "")),
        (client.create_cli_token, {"Name": env_name}, ("POST", f"/clitoken/{env_name}", "")),
        (client.create_web_login_token, {"Name": env_name}, ("POST", f"/webtoken/{env_name}", "")),
        (
            client.publish_metrics,
            {
                "EnvironmentName": env_name,
                "MetricData": [{"MetricName": "m", "Timestamp": datetime.now(UTC), "Value": 1.0}],
            },
            ("POST", f"/metrics/environments/{env_name}", ""),
        ),
        (
            client.update_environment,
            {"Name": env_name, "MaxWorkers": 4},
            ("PATCH", f"/environments/{env_name}", ""),
        ),
    ]
    for method, kwargs, expected in calls:
        del sent[:]
        response = method(**kwargs)
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert sent == [expected]
    assert client.list_tags_for_resource(ResourceArn=env_arn)["Tags"] == {"b": "2"}

    del sent[:]
    with pytest.raises(client.exceptions.RestApiServerException) as excinfo:
        client.invoke_rest_api(Name=env_name, Path="/dags", Method="GET")
    assert sent == [("POST", f"/restapi/{env_name}", "")]
    # the test backend runs no Airflow: MWAA's answer for an Airflow it cannot reach
    assert excinfo.value.response["RestApiStatusCode"] == 502

    wait_status(client, env_name, {"AVAILABLE"})
    del sent[:]
    assert client.delete_environment(Name=env_name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert sent == [("DELETE", f"/environments/{env_name}", "")]


# -- defaults ---------------------------------------------------------------------


def test_defaults_are_mwaas(server: Server, mwaa: Any, env_name: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    env = available(server, mwaa, env_name)
    assert env["Name"] == env_name
    assert env["Arn"] == f"arn:aws:airflow:us-east-1:123456789012:environment/{env_name}"
    assert before <= env["CreatedAt"] <= datetime.now(UTC) + timedelta(seconds=5)
    assert env["EnvironmentClass"] == "mw1.small"
    assert (env["MinWorkers"], env["MaxWorkers"]) == (1, 10)
    assert env["Schedulers"] == 2
    assert (env["MinWebservers"], env["MaxWebservers"]) == (2, 2)
    assert env["WebserverAccessMode"] == "PRIVATE_ONLY"
    assert env["EndpointManagement"] == "SERVICE"
    assert env["AirflowVersion"] == "3.3.2"
    assert re.fullmatch(
        r"(MON|TUE|WED|THU|FRI|SAT|SUN):([01]\d|2[0-3]):(00|30)",
        env["WeeklyMaintenanceWindowStart"],
    )
    assert env["ServiceRoleArn"] == (
        f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/airflow.amazonaws.com/"
        "AWSServiceRoleForAmazonMWAA"
    )
    assert env["CeleryExecutorQueue"].startswith(f"arn:aws:sqs:us-east-1:{ACCOUNT}:")
    assert env["ExecutionRoleArn"] == REQUIRED["ExecutionRoleArn"]
    assert env["SourceBucketArn"] == REQUIRED["SourceBucketArn"]
    assert env["DagS3Path"] == "dags"
    assert env["NetworkConfiguration"] == NETWORK
    assert env["Tags"] == {}
    assert "LastUpdate" not in env
    logging = env["LoggingConfiguration"]
    # no CloudWatchLogGroupArn until logs are collected into one
    assert logging["TaskLogs"] == {"Enabled": True, "LogLevel": "INFO"}
    for module in ("DagProcessingLogs", "SchedulerLogs", "WebserverLogs", "WorkerLogs"):
        assert logging[module] == {"Enabled": False, "LogLevel": "INFO"}, module


def test_given_values_are_kept(server: Server, mwaa: Any, env_name: str) -> None:
    env = available(
        server,
        mwaa,
        env_name,
        AirflowVersion="3.0.6",
        EnvironmentClass="mw1.medium",
        MinWorkers=2,
        MaxWorkers=5,
        Schedulers=3,
        MinWebservers=2,
        MaxWebservers=3,
        WebserverAccessMode="PUBLIC_ONLY",
        WeeklyMaintenanceWindowStart="TUE:03:30",
        PluginsS3Path="plugins.zip",
        AirflowConfigurationOptions={"core.dag_concurrency": "16"},
        LoggingConfiguration={
            "WorkerLogs": {"Enabled": True, "LogLevel": "WARNING"},
            "TaskLogs": {"Enabled": False, "LogLevel": "DEBUG"},
        },
    )
    assert env["AirflowVersion"] == "3.0.6"
    assert env["EnvironmentClass"] == "mw1.medium"
    assert (env["MinWorkers"], env["MaxWorkers"], env["Schedulers"]) == (2, 5, 3)
    assert (env["MinWebservers"], env["MaxWebservers"]) == (2, 3)
    assert env["WebserverAccessMode"] == "PUBLIC_ONLY"
    assert env["WeeklyMaintenanceWindowStart"] == "TUE:03:30"
    assert env["PluginsS3Path"] == "plugins.zip"
    assert env["AirflowConfigurationOptions"] == {"core.dag_concurrency": "16"}
    logging = env["LoggingConfiguration"]
    assert "CloudWatchLogGroupArn" not in logging["WorkerLogs"]
    assert logging["WorkerLogs"]["LogLevel"] == "WARNING"
    assert logging["TaskLogs"] == {"Enabled": False, "LogLevel": "DEBUG"}


# -- rules beyond the model ------------------------------------------------------


INVALID_CREATES: list[tuple[dict[str, Any], str]] = [
    ({"NetworkConfiguration": {"SubnetIds": ["subnet-1"]}}, "networkConfiguration.subnetIds"),
    (
        {"NetworkConfiguration": {"SubnetIds": ["subnet-1", "subnet-2", "subnet-3"]}},
        "networkConfiguration.subnetIds",
    ),
    ({"MinWorkers": 5, "MaxWorkers": 2}, "MinWorkers (5) must not exceed MaxWorkers (2)"),
    ({"MinWebservers": 3, "MaxWebservers": 2}, "MinWebservers (3) must not exceed MaxWebservers"),
    ({"MaxWorkers": 26}, "MaxWorkers must be at most 25"),
    ({"WeeklyMaintenanceWindowStart": "MON:10:15"}, "weeklyMaintenanceWindowStart"),
    ({"WeeklyMaintenanceWindowStart": "TUE:3:30"}, "weeklyMaintenanceWindowStart"),
    ({"WeeklyMaintenanceWindowStart": "MON:24:00"}, "weeklyMaintenanceWindowStart"),
    ({"AirflowVersion": "2.10.3"}, "AirflowVersion 2.10.3 is not supported"),
    ({"EnvironmentClass": "mw1.huge"}, "EnvironmentClass mw1.huge is not valid"),
    ({"DagS3Path": "/dags"}, "DagS3Path must be a path relative to the bucket"),
    ({"DagS3Path": "../dags"}, "DagS3Path must be a path relative to the bucket"),
    ({"RequirementsS3Path": "a/../../b.txt"}, "RequirementsS3Path must be a path relative"),
    ({"Tags": {"aws:team": "data"}}, "Tag keys starting with 'aws:' are reserved"),
    ({"ExecutionRoleArn": "role/x"}, "executionRoleArn"),
    ({"WebserverAccessMode": "EVERYONE"}, "webserverAccessMode"),
]


@pytest.mark.parametrize(("fields", "expected"), INVALID_CREATES)
def test_create_refuses(
    server: Server, loose: Any, env_name: str, fields: dict[str, Any], expected: str
) -> None:
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        create_env(server, loose, env_name, **fields)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert expected in error_message(excinfo)
    with pytest.raises(loose.exceptions.ResourceNotFoundException):
        loose.get_environment(Name=env_name)  # a refused request leaves nothing behind


def test_names_are_unique(server: Server, mwaa: Any, env_name: str) -> None:
    create_env(server, mwaa, env_name)
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        create_env(server, mwaa, env_name)
    assert f"An environment named {env_name} already exists" in error_message(excinfo)


def test_concurrent_creates_of_one_name(server: Server, env_name: str) -> None:
    client = server.client(max_pool_connections=12)

    def attempt(_: int) -> str:
        try:
            create_env(server, client, env_name)
            return "created"
        except client.exceptions.ClientError as e:
            return str(e.response["Error"]["Code"])

    with ThreadPoolExecutor(12) as pool:
        outcomes = sorted(pool.map(attempt, range(12)))
    assert outcomes == ["ValidationException"] * 11 + ["created"]


def test_update_rules(server: Server, mwaa: Any, loose: Any, env_name: str) -> None:
    available(server, mwaa, env_name)
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.update_environment(Name=env_name, AirflowVersion="3.0.6")
    assert "Changing AirflowVersion from 3.3.2 to 3.0.6" in error_message(excinfo)
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.update_environment(Name=env_name, MinWorkers=11)  # stored MaxWorkers is 10
    assert "MinWorkers (11) must not exceed MaxWorkers (10)" in error_message(excinfo)
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.update_environment(Name=env_name, WeeklyMaintenanceWindowStart="SUN:10:45")
    assert "weeklyMaintenanceWindowStart" in error_message(excinfo)
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.update_environment(Name=env_name, EnvironmentClass="mw1.huge")
    assert "mw1.huge" in error_message(excinfo)
    env = mwaa.get_environment(Name=env_name)["Environment"]
    assert env["Status"] == "AVAILABLE" and "LastUpdate" not in env  # nothing was accepted
    with pytest.raises(mwaa.exceptions.ResourceNotFoundException):
        mwaa.update_environment(Name=env_name + "x", MaxWorkers=3)


# -- the state machine -----------------------------------------------------------


def test_create_returns_at_once_then_becomes_available(
    server: Server, mwaa: Any, env_name: str
) -> None:
    with held_in_creating(server, env_name):
        started = time.monotonic()
        create_env(server, mwaa, env_name)
        assert time.monotonic() - started < 5
        env = mwaa.get_environment(Name=env_name)["Environment"]
        assert env["Status"] == "CREATING"
        assert env_process(server, env_name) is None
        with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
            mwaa.update_environment(Name=env_name, MaxWorkers=3)
        assert f"Environment {env_name} is CREATING" in error_message(excinfo)
        with pytest.raises(mwaa.exceptions.ValidationException):
            mwaa.create_cli_token(Name=env_name)
        time.sleep(0.5)
        assert mwaa.get_environment(Name=env_name)["Environment"]["Status"] == "CREATING"
    wait_status(mwaa, env_name, {"AVAILABLE"})
    process = env_process(server, env_name)
    assert process is not None and process.is_running()


def test_update_then_failed_update_rolls_back(server: Server, mwaa: Any, env_name: str) -> None:
    available(server, mwaa, env_name)
    first = env_process(server, env_name)
    assert first is not None
    mwaa.update_environment(
        Name=env_name,
        MaxWorkers=5,
        LoggingConfiguration={"SchedulerLogs": {"Enabled": True, "LogLevel": "ERROR"}},
    )
    env = wait_status(mwaa, env_name, {"AVAILABLE"})
    assert env["MaxWorkers"] == 5
    assert env["LoggingConfiguration"]["SchedulerLogs"]["LogLevel"] == "ERROR"
    assert env["LastUpdate"]["Status"] == "SUCCESS"
    assert env["LastUpdate"]["Source"] == "UpdateEnvironment"
    assert abs(env["LastUpdate"]["CreatedAt"] - datetime.now(UTC)) < timedelta(minutes=1)
    second = env_process(server, env_name)
    assert second is not None and second.pid != first.pid  # the update restarted it

    mwaa.update_environment(
        Name=env_name,
        MaxWorkers=7,
        AirflowConfigurationOptions={"core.test_fail_update": "true"},
    )
    env = wait_status(mwaa, env_name, {"UPDATE_FAILED"})
    assert env["LastUpdate"]["Status"] == "FAILED"
    assert env["LastUpdate"]["Error"]["ErrorCode"] == "TEST_FAILURE"
    assert "update failed" in env["LastUpdate"]["Error"]["ErrorMessage"]
    assert env["MaxWorkers"] == 5  # rolled back to what ran
    assert env["AirflowConfigurationOptions"] == {}
    assert env_process(server, env_name) is not None

    mwaa.update_environment(Name=env_name, MaxWorkers=6)  # UPDATE_FAILED may be updated
    env = wait_status(mwaa, env_name, {"AVAILABLE"})
    assert env["MaxWorkers"] == 6 and env["LastUpdate"]["Status"] == "SUCCESS"
    assert "Error" not in env["LastUpdate"]


def test_failed_create(server: Server, mwaa: Any, env_name: str) -> None:
    create_env(
        server, mwaa, env_name, AirflowConfigurationOptions={"core.test_fail_provision": "1"}
    )
    env = wait_status(mwaa, env_name, {"CREATE_FAILED"})
    assert env["LastUpdate"]["Status"] == "FAILED"
    assert env["LastUpdate"]["Error"] == {
        "ErrorCode": "TEST_FAILURE",
        "ErrorMessage": "provision failed as the test asked",
    }
    assert env_process(server, env_name) is None
    with pytest.raises(mwaa.exceptions.ValidationException):
        mwaa.update_environment(Name=env_name, MaxWorkers=3)
    mwaa.delete_environment(Name=env_name)
    deadline = time.monotonic() + 15
    with pytest.raises(mwaa.exceptions.ResourceNotFoundException):
        while time.monotonic() < deadline:
            mwaa.get_environment(Name=env_name)
            time.sleep(0.2)


def test_delete(server: Server, mwaa: Any, env_name: str) -> None:
    available(server, mwaa, env_name)
    process = env_process(server, env_name)
    assert process is not None
    mwaa.delete_environment(Name=env_name)
    try:
        status = mwaa.get_environment(Name=env_name)["Environment"]["Status"]
        assert status == "DELETING"
    except mwaa.exceptions.ResourceNotFoundException:
        pass  # already gone
    deadline = time.monotonic() + 15
    with pytest.raises(mwaa.exceptions.ResourceNotFoundException) as excinfo:
        while time.monotonic() < deadline:
            mwaa.get_environment(Name=env_name)
            time.sleep(0.1)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert f"Environment {env_name} does not exist" in error_message(excinfo)
    wait_no_process(process)
    assert not env_dir(server, env_name).exists()
    assert env_name not in mwaa.list_environments(MaxResults=25)["Environments"]
    with pytest.raises(mwaa.exceptions.ResourceNotFoundException):
        mwaa.delete_environment(Name=env_name)


def test_delete_while_creating(server: Server, mwaa: Any, env_name: str) -> None:
    with held_in_creating(server, env_name):
        create_env(server, mwaa, env_name)
        assert mwaa.get_environment(Name=env_name)["Environment"]["Status"] == "CREATING"
        mwaa.delete_environment(Name=env_name)
        assert mwaa.get_environment(Name=env_name)["Environment"]["Status"] == "DELETING"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            mwaa.get_environment(Name=env_name)
        except mwaa.exceptions.ResourceNotFoundException:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"{env_name} was not deleted")
    assert env_process(server, env_name) is None
    assert not env_dir(server, env_name).exists()


def test_killed_process_makes_environment_unavailable(
    server: Server, mwaa: Any, env_name: str
) -> None:
    available(server, mwaa, env_name)
    process = env_process(server, env_name)
    assert process is not None
    process.kill()
    wait_no_process(process)
    env = wait_status(mwaa, env_name, {"UNAVAILABLE"}, timeout=20)
    assert env["Name"] == env_name
    with pytest.raises(mwaa.exceptions.ValidationException):
        mwaa.create_cli_token(Name=env_name)


# -- listing ---------------------------------------------------------------------


def test_list_pages(server: Server, mwaa: Any, loose: Any, env_name: str) -> None:
    mine = [f"{env_name}{i}" for i in range(3)]
    for name in mine:
        create_env(server, mwaa, name)
    pages = list(mwaa.get_paginator("list_environments").paginate(PaginationConfig={"PageSize": 1}))
    names = [n for page in pages for n in page["Environments"]]
    assert all(len(page["Environments"]) == 1 for page in pages)
    assert len(pages) == len(names) >= 3
    assert set(mine) <= set(names)
    assert names == sorted(set(names))
    assert all("NextToken" in page for page in pages[:-1]) and "NextToken" not in pages[-1]

    first = mwaa.list_environments(MaxResults=2)
    assert len(first["Environments"]) == 2
    second = mwaa.list_environments(MaxResults=2, NextToken=first["NextToken"])
    assert second["Environments"] == names[2:4]

    everything = [
        n
        for page in mwaa.get_paginator("list_environments").paginate()
        for n in page["Environments"]
    ]
    assert everything == names

    for bad in (0, 26):
        with pytest.raises(loose.exceptions.ValidationException) as excinfo:
            loose.list_environments(MaxResults=bad)
        assert "maxResults" in error_message(excinfo)
    for token in ("garbage", "eyJ2IjoyfQ", first["NextToken"] + "x!"):
        with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
            mwaa.list_environments(NextToken=token)
        assert "NextToken is not valid" in error_message(excinfo)


# -- tags ------------------------------------------------------------------------


def test_tags(server: Server, mwaa: Any, env_name: str) -> None:
    env_arn = create_env(server, mwaa, env_name, Tags={"team": "data", "cost center": "42"})
    assert mwaa.list_tags_for_resource(ResourceArn=env_arn)["Tags"] == {
        "team": "data",
        "cost center": "42",
    }
    mwaa.tag_resource(ResourceArn=env_arn, Tags={"team": "ml", "tier": "gold"})
    assert mwaa.list_tags_for_resource(ResourceArn=env_arn)["Tags"] == {
        "team": "ml",
        "cost center": "42",
        "tier": "gold",
    }
    mwaa.untag_resource(ResourceArn=env_arn, tagKeys=["cost center", "absent"])
    assert mwaa.list_tags_for_resource(ResourceArn=env_arn)["Tags"] == {
        "team": "ml",
        "tier": "gold",
    }
    assert mwaa.get_environment(Name=env_name)["Environment"]["Tags"] == {
        "team": "ml",
        "tier": "gold",
    }
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.tag_resource(ResourceArn=env_arn, Tags={"aws:owner": "me"})
    assert "aws:owner" in error_message(excinfo)
    assert "aws:owner" not in mwaa.list_tags_for_resource(ResourceArn=env_arn)["Tags"]

    unknown = arn(env_name + "nope")
    for call in (
        lambda: mwaa.tag_resource(ResourceArn=unknown, Tags={"a": "b"}),
        lambda: mwaa.untag_resource(ResourceArn=unknown, tagKeys=["a"]),
        lambda: mwaa.list_tags_for_resource(ResourceArn=unknown),
    ):
        with pytest.raises(mwaa.exceptions.ResourceNotFoundException) as excinfo:
            call()
        assert unquote(unknown) in error_message(excinfo)
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.list_tags_for_resource(ResourceArn="arn:aws:s3:::bucket")
    assert "resourceArn" in error_message(excinfo)


def test_concurrent_tag_changes_lose_nothing(server: Server, env_name: str) -> None:
    client = server.client(max_pool_connections=20)
    env_arn = create_env(server, client, env_name, Tags={f"old{i}": "x" for i in range(10)})
    changes = [
        lambda i=i: client.tag_resource(ResourceArn=env_arn, Tags={f"new{i}": "y"})
        for i in range(10)
    ]
    changes += [
        lambda i=i: client.untag_resource(ResourceArn=env_arn, tagKeys=[f"old{i}"])
        for i in range(10)
    ]
    with ThreadPoolExecutor(20) as pool:
        for future in [pool.submit(change) for change in changes]:
            future.result()
    assert client.list_tags_for_resource(ResourceArn=env_arn)["Tags"] == {
        f"new{i}": "y" for i in range(10)
    }


# -- the environment endpoint ----------------------------------------------------


def test_tokens_and_metrics(server: Server, mwaa: Any, env_name: str) -> None:
    available(server, mwaa, env_name)
    cli = mwaa.create_cli_token(Name=env_name)
    assert len(cli["CliToken"]) >= 32
    assert cli["WebServerHostname"]
    web = mwaa.create_web_login_token(Name=env_name)
    assert len(web["WebToken"]) >= 32 and web["WebToken"] != cli["CliToken"]
    assert web["IamIdentity"] == f"arn:aws:iam::{ACCOUNT}:user/admin"
    assert web["AirflowIdentity"]
    assert mwaa.create_cli_token(Name=env_name)["CliToken"] != cli["CliToken"]

    response = mwaa.publish_metrics(
        EnvironmentName=env_name,
        MetricData=[
            {
                "MetricName": "TasksPending",
                "Timestamp": datetime.now(UTC),
                "Dimensions": [{"Name": "Function", "Value": "Executor"}],
                "Value": 3.0,
                "Unit": "Count",
            }
        ],
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200

    missing = env_name + "nope"
    for call in (
        lambda: mwaa.create_cli_token(Name=missing),
        lambda: mwaa.create_web_login_token(Name=missing),
        lambda: mwaa.invoke_rest_api(Name=missing, Path="/dags", Method="GET"),
    ):
        with pytest.raises(mwaa.exceptions.ResourceNotFoundException) as excinfo:
            call()
        assert f"Environment {missing} does not exist" in error_message(excinfo)
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.publish_metrics(EnvironmentName=missing, MetricData=[])
    assert missing in error_message(excinfo)


def test_invoke_rest_api_validation(server: Server, mwaa: Any, loose: Any, env_name: str) -> None:
    available(server, mwaa, env_name)
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.invoke_rest_api(Name=env_name, Path="/dags", Method="TRACE")
    assert "method" in error_message(excinfo)
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.invoke_rest_api(Name=env_name, Path="/dags/../../admin", Method="GET")
    assert "without '..'" in error_message(excinfo)
    with pytest.raises(mwaa.exceptions.RestApiServerException) as excinfo:
        mwaa.invoke_rest_api(Name=env_name, Path="/dags", Method="GET")
    assert error_code(excinfo) == "RestApiServerException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "RestApiResponse" in excinfo.value.response
