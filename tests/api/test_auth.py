"""SigV4 on every request, access keys from ``openmwaa keys`` and IAM-style policies."""

from __future__ import annotations

import json
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.auth
import httpx
import pytest
from api_support import (
    ACCOUNT,
    arn,
    assert_error,
    cleanup,
    create_env,
    error_code,
    error_message,
    signed_request,
)
from botocore import UNSIGNED
from botocore.exceptions import ClientError
from live_server import Server, wait_status

from openmwaa.service.identity import ADMIN_POLICY
from openmwaa.store.db import Store

MISMATCH = "The request signature we calculated does not match the signature you provided."


@pytest.fixture(scope="module", autouse=True)
def _delete_our_environments(server: Server, mwaa: Any) -> Any:
    yield
    cleanup(server, mwaa)


@pytest.fixture(scope="module")
def envs(server: Server, mwaa: Any) -> dict[str, str]:
    """Two AVAILABLE environments: ``allowed`` (named in policies) and ``other``."""
    stem = f"tauth{time.time_ns() % 10**8}"
    names = {"allowed": f"{stem}a", "other": f"{stem}b"}
    for name in names.values():
        create_env(server, mwaa, name)
    for name in names.values():
        wait_status(mwaa, name, {"AVAILABLE"})
    return names


@pytest.fixture(scope="module")
def users(server: Server, envs: dict[str, str]) -> dict[str, dict[str, str]]:
    """Keys made with ``openmwaa keys create`` (in parallel: each CLI run takes seconds)."""
    allowed = arn(envs["allowed"])
    policies = {
        "reader": {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "airflow:GetEnvironment", "Resource": allowed}
            ],
        },
        "denied": {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "airflow:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "airflow:Get*", "Resource": allowed},
            ],
        },
        "doomed": {
            "Version": "2012-10-17",
            "Statement": {"Effect": "Allow", "Action": "airflow:ListEnvironments", "Resource": "*"},
        },
    }

    def make(user: str) -> dict[str, str]:
        done = server.cli("keys", "create", user, "--policy", json.dumps(policies[user]))
        key = json.loads(done.stdout)
        assert key["UserName"] == user
        assert key["AccessKeyId"].startswith("AKIA") and len(key["AccessKeyId"]) == 20
        return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}

    with ThreadPoolExecutor(3) as pool:
        return dict(zip(policies, pool.map(make, policies), strict=True))


def client_of(server: Server, users: dict[str, dict[str, str]], user: str) -> Any:
    return server.client(key=users[user]["key"], secret=users[user]["secret"])


# -- signatures ----------------------------------------------------------------------


def test_good_key_works(server: Server, mwaa: Any) -> None:
    response = mwaa.list_environments()
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert isinstance(response["Environments"], list)
    assert signed_request(server, "GET", "/environments?MaxResults=1").status_code == 200


def test_forged_signature(server: Server) -> None:
    good = signed_request(server, "GET", "/environments")
    assert good.status_code == 200
    authorization = good.request.headers["authorization"]
    forged = authorization[:-4] + ("0000" if not authorization.endswith("0000") else "1111")
    headers = dict(good.request.headers) | {"authorization": forged}
    response = httpx.get(f"{server.endpoint}/environments", headers=headers, timeout=30)
    body = assert_error(response, "InvalidSignatureException", 403)
    assert body["message"].startswith(MISMATCH)
    assert forged not in response.text and "Signature=" not in response.text

    # a signature is for one request: another path or body with it is refused
    tampered = httpx.get(
        f"{server.endpoint}/environments?MaxResults=2", headers=dict(good.request.headers)
    )
    assert_error(tampered, "InvalidSignatureException", 403)
    signed = signed_request(server, "PUT", "/environments/tforged", b'{"a": 1}')
    assert signed.status_code == 400  # signature good, request invalid
    replay = httpx.put(
        f"{server.endpoint}/environments/tforged",
        content=b'{"a": 2}',
        headers=dict(signed.request.headers),
        timeout=30,
    )
    assert_error(replay, "InvalidSignatureException", 403)


def test_wrong_secret(server: Server) -> None:
    client = server.client(secret="not-the-secret-" + "x" * 25)
    with pytest.raises(ClientError) as excinfo:
        client.list_environments()
    assert error_code(excinfo) == "InvalidSignatureException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_message(excinfo).startswith(MISMATCH)


def test_unknown_key(server: Server) -> None:
    client = server.client(key="AKIA0000000000000000", secret="x" * 40)
    with pytest.raises(ClientError) as excinfo:
        client.get_environment(Name="anything")
    assert error_code(excinfo) == "UnrecognizedClientException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_message(excinfo) == "The security token included in the request is invalid."


@pytest.mark.parametrize(
    ("skew", "expected"),
    [(-20, "Signature expired"), (20, "Signature not yet current")],
)
def test_skewed_clock(
    server: Server, monkeypatch: pytest.MonkeyPatch, skew: int, expected: str
) -> None:
    real = botocore.auth.get_current_datetime

    def skewed(*args: Any, **kwargs: Any) -> datetime:
        return real(*args, **kwargs) + timedelta(minutes=skew)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", skewed)
    client = server.client()
    with pytest.raises(ClientError) as excinfo:
        client.list_environments()
    assert error_code(excinfo) == "InvalidSignatureException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_message(excinfo).startswith(expected)

    # the same through a hand-made signature with that timestamp
    when = datetime.now(UTC) + timedelta(minutes=skew)
    response = signed_request(server, "GET", "/environments", when=when)
    body = assert_error(response, "InvalidSignatureException", 403)
    assert body["message"].startswith(expected)


def test_small_clock_skew_is_tolerated(server: Server) -> None:
    for minutes in (-4, 4):
        when = datetime.now(UTC) + timedelta(minutes=minutes)
        assert signed_request(server, "GET", "/environments", when=when).status_code == 200


def test_missing_authorization(server: Server) -> None:
    client = server.client(signature_version=UNSIGNED)
    with pytest.raises(ClientError) as excinfo:
        client.list_environments()
    assert error_code(excinfo) == "MissingAuthenticationTokenException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_message(excinfo) == "Missing Authentication Token"
    for method, path in (("PUT", "/environments/tx"), ("DELETE", "/environments/tx")):
        response = httpx.request(method, f"{server.endpoint}{path}", content=b"{}", timeout=30)
        assert_error(response, "MissingAuthenticationTokenException", 403)


def test_incomplete_signature_is_a_400_that_names_what_is_missing(server: Server) -> None:
    good = signed_request(server, "GET", "/environments")
    authorization = good.request.headers["authorization"]
    broken = authorization.replace("SignedHeaders=", "Signed=")
    headers = dict(good.request.headers) | {"authorization": broken}
    response = httpx.get(f"{server.endpoint}/environments", headers=headers, timeout=30)
    body = assert_error(response, "IncompleteSignatureException", 400)
    assert body["message"] == "Authorization header requires 'SignedHeaders' parameter."
    signature = authorization.rpartition("Signature=")[2]
    assert signature not in response.text and "Authorization=" not in response.text


# -- policies ------------------------------------------------------------------------


def test_policy_allowing_one_action_on_one_environment(
    server: Server, envs: dict[str, str], users: dict[str, dict[str, str]]
) -> None:
    reader = client_of(server, users, "reader")
    assert reader.get_environment(Name=envs["allowed"])["Environment"]["Status"] == "AVAILABLE"
    user_arn = f"arn:aws:iam::{ACCOUNT}:user/reader"

    with pytest.raises(reader.exceptions.AccessDeniedException) as excinfo:
        reader.list_environments()
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_message(excinfo) == (
        f"User: {user_arn} is not authorized to perform: airflow:ListEnvironments on "
        "resource: * because no identity-based policy allows the airflow:ListEnvironments action"
    )
    other = arn(envs["other"])
    with pytest.raises(reader.exceptions.AccessDeniedException) as excinfo:
        reader.get_environment(Name=envs["other"])
    assert error_message(excinfo) == (
        f"User: {user_arn} is not authorized to perform: airflow:GetEnvironment on "
        f"resource: {other} because no identity-based policy allows the "
        "airflow:GetEnvironment action"
    )
    allowed = envs["allowed"]
    denied_calls = {
        "airflow:UpdateEnvironment": lambda: reader.update_environment(Name=allowed, MaxWorkers=2),
        "airflow:DeleteEnvironment": lambda: reader.delete_environment(Name=allowed),
        "airflow:CreateCliToken": lambda: reader.create_cli_token(Name=allowed),
        "airflow:CreateWebLoginToken": lambda: reader.create_web_login_token(Name=allowed),
        "airflow:InvokeRestApi": lambda: reader.invoke_rest_api(
            Name=allowed, Path="/dags", Method="GET"
        ),
        "airflow:TagResource": lambda: reader.tag_resource(
            ResourceArn=arn(allowed), Tags={"a": "b"}
        ),
        "airflow:ListTagsForResource": lambda: reader.list_tags_for_resource(
            ResourceArn=arn(allowed)
        ),
        "airflow:PublishMetrics": lambda: reader.publish_metrics(
            EnvironmentName=allowed, MetricData=[]
        ),
    }
    for action, call in denied_calls.items():
        with pytest.raises(reader.exceptions.AccessDeniedException) as excinfo:
            call()
        message = error_message(excinfo)
        assert f"is not authorized to perform: {action} on resource: arn:aws:airflow:" in message
        assert allowed in message
    assert server.client().get_environment(Name=allowed)["Environment"]["Status"] == "AVAILABLE"


def test_explicit_deny_overrides_allow(
    server: Server, envs: dict[str, str], users: dict[str, dict[str, str]]
) -> None:
    denied = client_of(server, users, "denied")
    pages = denied.get_paginator("list_environments").paginate()
    assert set(envs.values()) <= {n for page in pages for n in page["Environments"]}
    assert denied.get_environment(Name=envs["other"])["Environment"]["Name"] == envs["other"]
    assert denied.create_cli_token(Name=envs["allowed"])["CliToken"]
    with pytest.raises(denied.exceptions.AccessDeniedException) as excinfo:
        denied.get_environment(Name=envs["allowed"])
    assert error_message(excinfo) == (
        f"User: arn:aws:iam::{ACCOUNT}:user/denied is not authorized to perform: "
        f"airflow:GetEnvironment on resource: {arn(envs['allowed'])} with an explicit deny "
        "in an identity-based policy"
    )


def test_deleted_key_stops_working(server: Server, users: dict[str, dict[str, str]]) -> None:
    doomed = client_of(server, users, "doomed")
    assert doomed.list_environments()["ResponseMetadata"]["HTTPStatusCode"] == 200
    done = server.cli("keys", "delete", users["doomed"]["key"])
    assert users["doomed"]["key"] in done.stderr
    with pytest.raises(ClientError) as excinfo:  # at once, not after a cache expires
        doomed.list_environments()
    assert error_code(excinfo) == "UnrecognizedClientException"
    assert error_message(excinfo) == "The security token included in the request is invalid."


def test_a_key_deleted_by_another_process_fails_on_the_next_call(server: Server) -> None:
    """The store is the truth: a key removed there (here by this test process, as
    ``openmwaa keys delete`` does) fails on the very next request, however recently
    it was used."""
    done = server.cli("keys", "create", "brief", "--policy", json.dumps(ADMIN_POLICY))
    key = json.loads(done.stdout)
    client = server.client(key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    store = Store(f"sqlite:///{server.data_dir / 'openmwaa.db'}")
    try:
        for _ in range(3):
            assert client.list_environments()["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert store.delete_key(key["AccessKeyId"])
        with pytest.raises(ClientError) as excinfo:
            client.list_environments()
        assert error_code(excinfo) == "UnrecognizedClientException"
    finally:
        store.close()


# -- secrets ---------------------------------------------------------------------------


def test_secrets_stay_secret(
    server: Server, envs: dict[str, str], users: dict[str, dict[str, str]]
) -> None:
    admin = server.credentials()
    secrets = [admin["secret"], users["reader"]["secret"], users["denied"]["secret"]]

    key_file = server.data_dir / "admin-key.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    listing = server.cli("keys", "list")
    for key in (admin["key"], users["reader"]["key"], users["denied"]["key"]):
        assert key in listing.stdout
    assert "reader" in listing.stdout
    for secret in secrets:
        assert secret not in listing.stdout and secret not in listing.stderr

    name = envs["allowed"]
    responses = [
        signed_request(server, "GET", f"/environments/{name}"),
        signed_request(server, "GET", "/environments"),
        signed_request(server, "POST", f"/webtoken/{name}"),
        signed_request(server, "POST", f"/clitoken/{name}"),
        signed_request(server, "GET", "/environments", secret="wrong-secret"),
        signed_request(server, "GET", "/environments/x", key=users["reader"]["key"], secret="no"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 403, 403]
    log = server.log.read_text(errors="replace")
    for secret in secrets:
        for response in responses:
            assert secret not in response.text
            assert secret not in str(response.headers)
        assert secret not in log
