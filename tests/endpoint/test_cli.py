"""CLI tokens: ``aws mwaa create-cli-token`` + curl on ``/aws_mwaa/cli``, as MWAA documents."""

from __future__ import annotations

import json
from typing import Any

import pytest
from endpoint_support import available, aws, aws_env, curl_cli, decoded

ENV = "ep"


def test_cli_token_runs_a_command_with_aws_cli_and_curl(
    plane: Any, admin: Any, environment: dict[str, Any], endpoint: str
) -> None:
    env = aws_env(plane)
    available(admin)
    token = aws(env, "create-cli-token", "--name", ENV)
    assert "http://" + token["WebServerHostname"] == endpoint
    status, answer = curl_cli(
        token["WebServerHostname"],
        token["CliToken"],
        """dags trigger hello --conf '{"a": 1, "b": "two words"}' --run-id from-cli""",
    )
    stdout, stderr = decoded(answer)
    assert status == 200, (stdout, stderr)
    assert set(answer) == {"stdout", "stderr"}
    assert "from-cli" in stdout, (stdout, stderr)
    run = admin.invoke_rest_api(Name=ENV, Path="/dags/hello/dagRuns/from-cli", Method="GET")
    assert run["RestApiResponse"]["conf"] == {"a": 1, "b": "two words"}

    # Single use: the same token again is refused.
    status, answer = curl_cli(token["WebServerHostname"], token["CliToken"], "version")
    assert status == 403 and "invalid, expired or already used" in answer["message"]

    available(admin)
    token = aws(env, "create-cli-token", "--name", ENV)
    status, answer = curl_cli(token["WebServerHostname"], token["CliToken"], "version")
    assert status == 200 and decoded(answer)[0].strip().startswith("3.")


@pytest.mark.parametrize(
    "command",
    [
        "db reset -y",
        "users list",
        "connections export /tmp/x.json",
        "webserver",
        "api-server",
        "shell",
        "config list",
        "dags list --subdir /etc",
        "dags show hello --save /tmp/x.png",
        "dags",
        "",
    ],
)
def test_commands_outside_the_list_are_refused(
    admin: Any, environment: dict[str, Any], command: str
) -> None:
    available(admin)
    token = admin.create_cli_token(Name=ENV)
    status, answer = curl_cli(token["WebServerHostname"], token["CliToken"], command)
    assert status == 400, answer
    reasons = ("not supported", "must be an Airflow CLI", "is not an option", "needs a command")
    assert any(reason in answer["message"] for reason in reasons), answer["message"]
    assert decoded(answer)[1] == answer["message"]


def test_arguments_are_never_a_shell(
    admin: Any, environment: dict[str, Any], tmp_path: Any
) -> None:
    marker = tmp_path / "pwned"
    available(admin)
    token = admin.create_cli_token(Name=ENV)
    status, answer = curl_cli(
        token["WebServerHostname"],
        token["CliToken"],
        f"variables set shell_test 'x; touch {marker}' ; touch {marker} $(touch {marker})",
    )
    # Extra words are arguments Airflow refuses; nothing is run by a shell.
    assert status == 200
    assert not marker.exists()
    available(admin)
    token = admin.create_cli_token(Name=ENV)
    status, answer = curl_cli(
        token["WebServerHostname"],
        token["CliToken"],
        f"variables set shell_test 'x; touch {marker}'",
    )
    assert status == 200, decoded(answer)
    got = admin.invoke_rest_api(Name=ENV, Path="/variables/shell_test", Method="GET")
    assert got["RestApiResponse"]["value"] == f"x; touch {marker}"
    assert not marker.exists()


def test_bad_cli_tokens_are_refused(admin: Any, environment: dict[str, Any], endpoint: str) -> None:
    hostname = endpoint.removeprefix("http://")
    status, answer = curl_cli(hostname, "forged-token-" + "x" * 32, "version")
    assert status == 403, answer
    # A web login token is not a CLI token.
    available(admin)
    web = admin.create_web_login_token(Name=ENV)
    status, answer = curl_cli(hostname, web["WebToken"], "version")
    assert status == 403, answer


def test_cli_runs_variables_round_trip(admin: Any, environment: dict[str, Any]) -> None:
    available(admin)
    token = admin.create_cli_token(Name=ENV)
    status, answer = curl_cli(
        token["WebServerHostname"], token["CliToken"], "variables set greeting '{\"hi\": 1}'"
    )
    assert status == 200, decoded(answer)
    available(admin)
    token = admin.create_cli_token(Name=ENV)
    status, answer = curl_cli(
        token["WebServerHostname"], token["CliToken"], "variables get greeting"
    )
    assert status == 200
    assert json.loads(decoded(answer)[0].strip().splitlines()[-1]) == {"hi": 1}
