"""Tokens and InvokeRestApi: who may call them, what they reveal, what they accept.

Against a live server with the test backend (no Airflow needed): everything here is
decided before the environment's Airflow would be called.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_support import cleanup, create_env, error_code, error_message
from endpoint_support import client_for
from live_server import Server, wait_status

ENV = "authz"
ROLE = f"arn:aws:airflow:us-east-1:123456789012:role/{ENV}"


@pytest.fixture(scope="module")
def authz_env(server: Server, mwaa: Any) -> Iterator[str]:
    create_env(server, mwaa, ENV)
    wait_status(mwaa, ENV, {"AVAILABLE"})
    yield ENV
    cleanup(server, mwaa)


def key(server: Server, user: str, statements: list[dict[str, Any]]) -> Any:
    policy = json.dumps({"Version": "2012-10-17", "Statement": statements})
    done = server.cli("keys", "create", user, "--policy", policy)
    return client_for(server, json.loads(done.stdout))


def _denied(call: Any, client: Any) -> str:
    with pytest.raises(client.exceptions.AccessDeniedException) as excinfo:
        call()
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return error_message(excinfo)


def test_a_denied_caller_cannot_tell_whether_an_environment_exists(
    server: Server, mwaa: Any, authz_env: str
) -> None:
    denied = key(server, "denyall", [{"Effect": "Deny", "Action": "*", "Resource": "*"}])
    missing = "authz-missing"
    assert mwaa.list_environments()["Environments"].count(missing) == 0
    for name in (authz_env, missing):
        answers = [
            _denied(lambda name=name: denied.create_web_login_token(Name=name), denied),
            _denied(lambda name=name: denied.create_cli_token(Name=name), denied),
            _denied(
                lambda name=name: denied.invoke_rest_api(Name=name, Path="/dags", Method="GET"),
                denied,
            ),
        ]
        if name == authz_env:
            existing = [a.replace(authz_env, "NAME") for a in answers]
        else:
            assert [a.replace(missing, "NAME") for a in answers] == existing


def test_public_is_no_airflow_user(server: Server, mwaa: Any, authz_env: str) -> None:
    actions = ["airflow:InvokeRestApi", "airflow:CreateWebLoginToken"]
    public = key(
        server, "public", [{"Effect": "Allow", "Action": actions, "Resource": f"{ROLE}/Public"}]
    )
    message = _denied(lambda: public.invoke_rest_api(Name=ENV, Path="/dags", Method="GET"), public)
    assert "Public" in message
    message = _denied(lambda: public.create_web_login_token(Name=ENV), public)
    assert "Public" in message


def test_airflow_identity_is_the_role_users_name(server: Server, mwaa: Any, authz_env: str) -> None:
    """The user Airflow records for the session (its JWT's ``sub``; see test_web_login)."""
    assert mwaa.create_web_login_token(Name=ENV)["AirflowIdentity"] == "admin"
    viewer = key(
        server,
        "viewer-identity",
        [
            {
                "Effect": "Allow",
                "Action": "airflow:CreateWebLoginToken",
                "Resource": f"{ROLE}/Viewer",
            }
        ],
    )
    assert viewer.create_web_login_token(Name=ENV)["AirflowIdentity"] == "viewer"


@pytest.mark.parametrize(
    "query",
    [["limit", 10], {"limit": {"a": 1}}, {"tags": [{"a": 1}]}, {"tags": [["x"]]}, "limit=10", 5],
)
def test_query_parameters_of_the_wrong_type_are_a_validation_error(
    mwaa: Any, authz_env: str, query: Any
) -> None:
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.invoke_rest_api(Name=ENV, Path="/dags", Method="GET", QueryParameters=query)
    assert "QueryParameters" in error_message(excinfo)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize(
    "path", ["/dags\r\nX-Injected: 1", "/dags\n", "/dags\r", "/da\tgs", "/dags\x00", "/dags\x7f"]
)
def test_paths_with_control_characters_are_a_validation_error(
    mwaa: Any, authz_env: str, path: str
) -> None:
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.invoke_rest_api(Name=ENV, Path=path, Method="GET")
    assert error_code(excinfo) == "ValidationException"
    assert "Path" in error_message(excinfo)
