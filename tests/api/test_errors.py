"""Errors as AWS sends them, and no 500 for any request however malformed.

Raw requests are signed with botocore's SigV4Auth exactly as built here and sent with
httpx, so the server sees bodies, paths and types botocore would never produce.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_support import (  # noqa: F401 (fixtures)
    arn,
    assert_error,
    error_code,
    error_message,
    remember,
    signed_request,
)
from botocore.exceptions import ClientError
from live_server import REQUIRED, Server

MIB = 1024 * 1024


pytestmark = pytest.mark.usefixtures("delete_module_environments")


def create_body(**fields: Any) -> bytes:
    return json.dumps({**REQUIRED, **fields}).encode()


# -- the shape of an error ----------------------------------------------------------


def test_validation_error_on_the_wire(server: Server) -> None:
    response = signed_request(server, "PUT", "/environments/t-wire", create_body(MaxWorkers="ten"))
    body = assert_error(response, "ValidationException", 400)
    assert body["message"] == (
        "1 validation error detected: Value 'ten' at 'maxWorkers' failed to satisfy "
        "constraint: Member must be an integer"
    )


def test_not_found_on_the_wire(server: Server) -> None:
    response = signed_request(server, "GET", "/environments/tNoSuchEnvironment")
    body = assert_error(response, "ResourceNotFoundException", 404)
    assert body["message"] == "Environment tNoSuchEnvironment does not exist."


def test_missing_authentication_on_the_wire(server: Server) -> None:
    response = httpx.get(f"{server.endpoint}/environments", timeout=30)  # not signed
    body = assert_error(response, "MissingAuthenticationTokenException", 403)
    assert body["message"] == "Missing Authentication Token"


def test_botocore_parses_each_error_into_its_class(server: Server, mwaa: Any) -> None:
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.list_environments(NextToken="not-a-token")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error_code(excinfo) == "ValidationException"

    with pytest.raises(mwaa.exceptions.ResourceNotFoundException) as excinfo:
        mwaa.get_environment(Name="tNoSuchEnvironment")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error_message(excinfo) == "Environment tNoSuchEnvironment does not exist."

    stranger = server.client(key="AKIAUNKNOWNUNKNOWN00", secret="x" * 40)
    with pytest.raises(ClientError) as excinfo:
        stranger.list_environments()
    assert error_code(excinfo) == "UnrecognizedClientException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error_message(excinfo) == "The security token included in the request is invalid."


# -- messages name the field and say why ---------------------------------------------


def test_wrong_types_through_boto3(server: Server, loose: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"MaxWorkers": "ten"}, "Value 'ten' at 'maxWorkers' failed to satisfy constraint: "),
        ({"MinWorkers": True}, "at 'minWorkers' failed to satisfy constraint: Member must be"),
        (
            {"Tags": {"a": 1}},
            "Value '1' at 'tags.a' failed to satisfy constraint: Member must be a",
        ),
        (
            {"LoggingConfiguration": {"TaskLogs": {"Enabled": "yes", "LogLevel": "INFO"}}},
            "at 'loggingConfiguration.taskLogs.enabled' failed to satisfy constraint",
        ),
        ({"ExecutionRoleArn": None}, "Value null at 'executionRoleArn' failed to satisfy "),
        ({"Schedulers": 0}, "Schedulers must be between 2 and 5 for mw1.small; got 0."),
        ({"MaxWebservers": 0}, "at 'maxWebservers' failed to satisfy constraint: Member must have"),
    ]
    for fields, expected in cases:
        request = {**REQUIRED, **fields}
        request = {k: v for k, v in request.items() if v is not None}
        with pytest.raises(loose.exceptions.ValidationException) as excinfo:
            loose.create_environment(Name="tWrongTypes", **request)
        assert expected in error_message(excinfo), fields
    with pytest.raises(loose.exceptions.ResourceNotFoundException):
        loose.get_environment(Name="tWrongTypes")


def test_several_errors_are_all_named(server: Server) -> None:
    response = signed_request(
        server,
        "PUT",
        "/environments/t-several",
        json.dumps(
            {
                "SourceBucketArn": "arn:aws:s3:::b",
                "DagS3Path": "dags",
                "NetworkConfiguration": {"SubnetIds": ["subnet-1", "nope"]},
            }
        ).encode(),
    )
    message = assert_error(response, "ValidationException", 400)["message"]
    assert message.startswith("2 validation errors detected: ")
    assert "Value null at 'executionRoleArn' failed to satisfy constraint" in message
    assert "Value 'nope' at 'networkConfiguration.subnetIds.2.member'" in message


def test_path_traversal_in_names(server: Server, loose: Any) -> None:
    for name in ("../x", "..", "a/b", "x/../../etc"):
        with pytest.raises(loose.exceptions.ValidationException) as excinfo:
            loose.get_environment(Name=name)
        assert "at 'name' failed to satisfy constraint" in error_message(excinfo), name
        with pytest.raises(loose.exceptions.ValidationException):
            loose.create_environment(Name=name, **REQUIRED)
    for path in ("/environments/%2e%2e%2fx", "/environments/..%2Fx", "/environments/%2E%2E"):
        body = assert_error(signed_request(server, "GET", path), "ValidationException", 400)
        assert "at 'name'" in body["message"], path
    assert not (server.data_dir.parent / "x").exists()


def test_unknown_fields_are_ignored(server: Server, mwaa: Any, env_name: str) -> None:
    remember(server, env_name)
    body = create_body(Bogus=1, Nested={"x": [1, 2]}, EnvironmentClass="mw1.small")
    response = signed_request(server, "PUT", f"/environments/{env_name}", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"Arn": arn(env_name)}
    env = mwaa.get_environment(Name=env_name)["Environment"]
    assert "Bogus" not in env and env["EnvironmentClass"] == "mw1.small"


# -- never a 500 ----------------------------------------------------------------------

NESTED = b"[" * 100_000 + b"]" * 100_000

MALFORMED: list[tuple[str, str, bytes, int, str]] = [
    ("PUT", "/environments/t-json", b"{bad", 400, "not valid JSON"),
    ("PUT", "/environments/t-json", b"[1, 2]", 400, "must be a JSON object"),
    ("PUT", "/environments/t-json", b"null", 400, "must be a JSON object"),
    ("PUT", "/environments/t-json", b'"text"', 400, "must be a JSON object"),
    ("PUT", "/environments/t-json", b"\xff\xfe{}", 400, "not valid JSON"),
    ("PUT", "/environments/t-json", NESTED, 400, "not valid JSON"),
    ("PUT", "/environments/t-json", b'{"MaxWorkers": ' + b"9" * 5000 + b"}", 400, "not valid"),
    ("PATCH", "/environments/t-json", b'{"MaxWorkers": 1e400}', 400, "'maxWorkers'"),
    ("PATCH", "/environments/t-json", b'{"MaxWorkers": 2.5}', 400, "'maxWorkers'"),
    ("PATCH", "/environments/t-json", b'{"MaxWorkers": NaN}', 400, "'maxWorkers'"),
    ("PUT", "/environments/t-json", create_body(Tags={"k": None}), 400, "'tags'"),
    (
        "PUT",
        "/environments/t-json",
        create_body(NetworkConfiguration={"SubnetIds": "subnet-1"}),
        400,
        "at 'networkConfiguration.subnetIds' failed to satisfy constraint: Member must be a list",
    ),
    (
        "PUT",
        "/environments/t-json",
        create_body(NetworkConfiguration={"SubnetIds": [None, "subnet-2"]}),
        400,
        "'networkConfiguration.subnetIds.1.member'",
    ),
    (
        "PATCH",
        "/environments/t-json",
        b'{"AirflowConfigurationOptions": {"core.x": {"y": 1}}}',
        400,
        "'airflowConfigurationOptions.core.x'",
    ),
    (
        "PATCH",
        "/environments/t-json",
        b'{"AirflowConfigurationOptions": {"core.x": null}}',
        400,
        "'airflowConfigurationOptions'",
    ),
    ("POST", "/metrics/environments/t-json", b'{"MetricData": [null]}', 400, "metricData.1"),
    ("POST", "/metrics/environments/t-json", b'{"MetricData": "x"}', 400, "'metricData'"),
    (
        "POST",
        "/metrics/environments/t-json",
        b'{"MetricData": [{"MetricName": "m", "Timestamp": "yesterday"}]}',
        400,
        "'metricData.1.member.timestamp'",
    ),
    (
        "POST",
        "/metrics/environments/t-json",
        b'{"MetricData": [{"MetricName": "m", "Timestamp": 1e300}]}',
        400,
        "'metricData.1.member.timestamp'",
    ),
    ("POST", "/restapi/t-json", b'{"Path": "/dags", "Method": "BREW"}', 400, "'method'"),
    ("POST", "/restapi/t-json", b'{"Path": 5, "Method": "GET"}', 400, "'path'"),
    ("GET", "/environments?MaxResults=many", b"", 400, "'maxResults'"),
    ("GET", "/environments?MaxResults=99999999999999999999", b"", 400, "'maxResults'"),
    ("GET", "/environments?MaxResults=-1", b"", 400, "'maxResults'"),
    ("GET", "/environments?NextToken=%00%01", b"", 400, "NextToken is not valid"),
    ("GET", "/environments/" + "a" * 5000, b"", 400, "length less than or equal to 80"),
    ("GET", "/environments/a%00b", b"", 400, "'name'"),
    ("GET", "/environments/%ff%fe", b"", 400, "'name'"),
    ("DELETE", "/tags/not-an-arn?tagKeys=a", b"", 400, "'resourceArn'"),
    ("DELETE", "/tags/" + arn("x").replace("/", "%2F"), b"", 400, "'tagKeys'"),
    ("GET", "/nope", b"", 404, "No operation answers GET /nope"),
    ("POST", "/environments", b"{}", 404, "No operation answers POST /environments"),
    ("GET", "/environments/a/b/c", b"", 404, "No operation answers"),
    ("GET", "/../../etc/passwd", b"", 404, "No operation answers"),
    ("PUT", "/environments/t-big", b"{" + b" " * (MIB + 10) + b"}", 400, "larger than 1048576"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "expected"),
    MALFORMED,
    ids=[f"{m} {p[:40]} {b[:20]!r}" for m, p, b, _, _ in MALFORMED],
)
def test_malformed_requests_get_a_4xx(
    server: Server, method: str, path: str, body: bytes, status: int, expected: str
) -> None:
    response = signed_request(server, method, path, body)
    code = "UnknownOperationException" if status == 404 else "ValidationException"
    message = assert_error(response, code, status)["message"]
    assert expected in message


def test_chunked_body_over_a_mebibyte(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"Tags": {"a": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}}'

    # signed (for another body): only a request that can be authenticated has its body read
    signed = signed_request(server, "PUT", "/environments/t-chunked").request.headers
    headers = {k: v for k, v in signed.items() if k.lower() not in ("content-length", "host")}
    response = httpx.put(
        f"{server.endpoint}/environments/t-chunked", content=chunks(), headers=headers, timeout=30
    )
    assert "content-length" not in response.request.headers
    body = assert_error(response, "ValidationException", 400)
    assert "larger than 1048576 bytes" in body["message"]


@pytest.mark.parametrize(
    ("authorization", "code", "status"),
    [
        ("", "IncompleteSignatureException", 400),
        ("AWS4-HMAC-SHA256", "IncompleteSignatureException", 400),
        (
            "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/airflow/aws4_request",
            "IncompleteSignatureException",
            400,
        ),
        (
            "AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host, Signature=00",
            "IncompleteSignatureException",
            400,
        ),
        ("Basic dXNlcjpwYXNz", "IncompleteSignatureException", 400),
        (
            "AWS4-HMAC-SHA256 Credential=\u00e9\u00e9/20260101/us-east-1/airflow/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=\u00ff",
            "InvalidSignatureException",  # Signature expired
            403,
        ),
    ],
)
def test_malformed_authorization_is_refused(
    server: Server, authorization: str, code: str, status: int
) -> None:
    headers = {"Authorization": authorization, "X-Amz-Date": "20260101T000000Z"}
    response = httpx.get(
        f"{server.endpoint}/environments",
        headers=[(k.encode(), v.encode("latin-1")) for k, v in headers.items()],
        timeout=30,
    )
    body = assert_error(response, code, status)
    assert "Authorization=" not in body["message"]
    if authorization:
        assert authorization not in response.text


def test_the_server_logged_no_failure(server: Server) -> None:
    """Every request of the modules so far got an answer, none a 500 (which logs a traceback)."""
    log = server.log.read_text(errors="replace")
    assert "openmwaa serving the MWAA API" in log
    assert "Traceback" not in log  # what a 500 (or a crashed reconciler step) leaves
