"""Every operation through botocore's serializer -> our parser, and our serializer ->
botocore's parser: the wire format is right if botocore cannot tell us from AWS."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from openmwaa.api import protocol
from openmwaa.api.validation import validate
from openmwaa.service.documents import RawJson
from openmwaa.service.errors import (
    AccessDeniedException,
    ResourceNotFoundException,
    RestApiException,
    ValidationException,
)

ARN = "arn:aws:airflow:us-east-1:123456789012:environment/etl"
NOW = datetime(2026, 11, 24, 4, 0, 0, tzinfo=UTC)

REQUESTS: dict[str, dict[str, Any]] = {
    "CreateEnvironment": {
        "Name": "etl",
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/x",
        "SourceBucketArn": "arn:aws:s3:::my-dags",
        "DagS3Path": "dags",
        "NetworkConfiguration": {
            "SubnetIds": ["subnet-1", "subnet-2"],
            "SecurityGroupIds": ["sg-1"],
        },
        "PluginsS3Path": "plugins.zip",
        "PluginsS3ObjectVersion": "v1",
        "AirflowConfigurationOptions": {"core.dag_concurrency": "16"},
        "EnvironmentClass": "mw1.medium",
        "MaxWorkers": 5,
        "MinWorkers": 2,
        "LoggingConfiguration": {"TaskLogs": {"Enabled": True, "LogLevel": "DEBUG"}},
        "WeeklyMaintenanceWindowStart": "TUE:03:30",
        "Tags": {"team": "data", "cost center": "42"},
        "WebserverAccessMode": "PUBLIC_ONLY",
        "Schedulers": 3,
        "EndpointManagement": "SERVICE",
        "MinWebservers": 2,
        "MaxWebservers": 3,
    },
    "GetEnvironment": {"Name": "etl"},
    "UpdateEnvironment": {
        "Name": "etl",
        "MaxWorkers": 8,
        "NetworkConfiguration": {"SecurityGroupIds": ["sg-2"]},
        "WorkerReplacementStrategy": "GRACEFUL",
    },
    "DeleteEnvironment": {"Name": "etl"},
    "ListEnvironments": {"MaxResults": 5, "NextToken": "abc+/="},
    "CreateCliToken": {"Name": "etl"},
    "CreateWebLoginToken": {"Name": "etl"},
    "InvokeRestApi": {
        "Name": "etl",
        "Path": "/dags/x/dagRuns",
        "Method": "POST",
        "QueryParameters": {"limit": 5},
        "Body": {"conf": {"a": [1, 2]}, "logical_date": None},
    },
    "TagResource": {"ResourceArn": ARN, "Tags": {"a": "1"}},
    "UntagResource": {"ResourceArn": ARN, "tagKeys": ["a", "b c"]},
    "ListTagsForResource": {"ResourceArn": ARN},
    "PublishMetrics": {
        "EnvironmentName": "etl",
        "MetricData": [
            {
                "MetricName": "m",
                "Timestamp": NOW,
                "Dimensions": [{"Name": "d", "Value": "v"}],
                "Value": 1.5,
                "Unit": "Count",
                "StatisticValues": {"SampleCount": 1, "Sum": 1.0, "Minimum": 1.0, "Maximum": 1.0},
            }
        ],
    },
}

RESPONSES: dict[str, dict[str, Any]] = {
    "CreateEnvironment": {"Arn": ARN},
    "UpdateEnvironment": {"Arn": ARN},
    "GetEnvironment": {
        "Environment": {
            "Name": "etl",
            "Status": "AVAILABLE",
            "Arn": ARN,
            "CreatedAt": NOW,
            "MaxWorkers": 10,
            "Tags": {"a": "b"},
            "NetworkConfiguration": {"SubnetIds": ["subnet-1", "subnet-2"]},
            "LastUpdate": {
                "Status": "FAILED",
                "CreatedAt": NOW,
                "Error": {"ErrorCode": "X", "ErrorMessage": "broken"},
            },
        }
    },
    "ListEnvironments": {"Environments": ["a", "b"], "NextToken": "t"},
    "CreateCliToken": {"CliToken": "tok", "WebServerHostname": "host"},
    "CreateWebLoginToken": {
        "WebToken": "tok",
        "WebServerHostname": "host",
        "IamIdentity": "arn:aws:iam::123456789012:user/a",
        "AirflowIdentity": "a",
    },
    "InvokeRestApi": {"RestApiStatusCode": 200, "RestApiResponse": {"dags": [], "n": 1.5}},
    "ListTagsForResource": {"Tags": {"a": "b"}},
    "DeleteEnvironment": {},
    "TagResource": {},
    "UntagResource": {},
    "PublishMetrics": {},
}


def test_every_operation_is_covered() -> None:
    names = set(protocol.service_model().operation_names)
    assert names == set(REQUESTS) == set(RESPONSES)
    assert len(names) == 12


@pytest.mark.parametrize("operation_name", sorted(REQUESTS))
def test_request_round_trip(operation_name: str) -> None:
    model = protocol.service_model()
    operation = model.operation_model(operation_name)
    wire = create_serializer("rest-json").serialize_to_request(REQUESTS[operation_name], operation)
    url = urlsplit(wire["url_path"])
    query = urlencode(wire["query_string"], doseq=True)
    matched, labels = protocol.match(wire["method"], url.path)
    assert matched.name == operation_name
    body = wire["body"] if isinstance(wire["body"], bytes) else wire["body"].encode()
    headers = {k.lower(): v for k, v in wire["headers"].items()}
    params = protocol.parse_request(matched, labels, query, headers, body)
    validate(matched.input_shape, params)
    assert params == REQUESTS[operation_name]


@pytest.mark.parametrize("operation_name", sorted(RESPONSES))
def test_response_round_trip(operation_name: str) -> None:
    operation = protocol.service_model().operation_model(operation_name)
    status, headers, body = protocol.serialize_response(operation, RESPONSES[operation_name], "rid")
    parsed = create_parser("rest-json").parse(
        {"status_code": status, "headers": dict(headers), "body": body}, operation.output_shape
    )
    metadata = parsed.pop("ResponseMetadata")
    assert metadata["RequestId"] == "rid"
    assert parsed == RESPONSES[operation_name]


@pytest.mark.parametrize(
    "document",
    [{"dags": [{"dag_id": "é\u2603", "tags": []}], "n": 1.5, "none": None}, [1, "two"], "x", 3],
)
def test_invoke_rest_api_passes_airflow_json_on_as_it_came(document: Any) -> None:
    """InvokeRestApi embeds Airflow's UTF-8 JSON text without decoding it again."""
    operation = protocol.service_model().operation_model("InvokeRestApi")
    raw = RawJson(json.dumps(document, ensure_ascii=False, indent=1).encode())
    output = {"RestApiStatusCode": 200, "RestApiResponse": raw}
    status, headers, body = protocol.serialize_response(operation, output, "rid")
    assert raw.data in body
    parsed = create_parser("rest-json").parse(
        {"status_code": status, "headers": dict(headers), "body": body}, operation.output_shape
    )
    parsed.pop("ResponseMetadata")
    assert parsed == {"RestApiStatusCode": 200, "RestApiResponse": document}


@pytest.mark.parametrize(
    "error",
    [
        ValidationException("bad"),
        ResourceNotFoundException("gone"),
        AccessDeniedException("no"),
        RestApiException(404, {"detail": "nope"}),
        RestApiException(503, {"detail": "down"}),
    ],
)
def test_error_round_trip(error: Any) -> None:
    model = protocol.service_model()
    status, headers, body = protocol.serialize_error(error, "rid")
    response = {"status_code": status, "headers": dict(headers), "body": body}
    parser = create_parser("rest-json")
    parsed = parser.parse(response, model.operation_model("InvokeRestApi").output_shape)
    # as botocore's endpoint does: the modeled error's own members come from its shape
    parsed.update(parser.parse(response, model.shape_for_error_code(parsed["Error"]["Code"])))
    assert parsed["Error"]["Code"] == error.code
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == error.status
    if isinstance(error, RestApiException):
        assert parsed["RestApiStatusCode"] == error.status_code
        assert parsed["RestApiResponse"] == error.response
    else:
        assert parsed["Error"]["Message"] == error.message
