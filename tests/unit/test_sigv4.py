"""SigV4 verification against requests signed by botocore itself."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials

from openmwaa.api.sigv4 import SignatureError, decode_query, verify

AKID = "AKIAOPENMWAATEST0001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
ENDPOINT = "http://localhost:8080"
ARN = "arn:aws:airflow:us-east-1:123456789012:environment/etl"
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


@dataclass(frozen=True)
class Wire:
    """A request as the server receives it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next(v for k, v in self.headers if k.lower() == name.lower())

    def with_header(self, name: str, value: str) -> Wire:
        rest = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        return replace(self, headers=[*rest, (name, value)])

    def without_header(self, name: str) -> Wire:
        return replace(self, headers=[(k, v) for k, v in self.headers if k.lower() != name.lower()])

    @property
    def signed_at(self) -> datetime:
        stamp = self.header("X-Amz-Date")
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


class _Stream:
    def stream(self, **_: Any) -> Any:
        yield b"{}"


def _to_wire(method: str, url: str, headers: Any, body: bytes | str | None) -> Wire:
    parts = urlsplit(url)
    wire_headers = [
        (k, v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in headers.items()
    ]
    # What urllib3 adds on the wire after signing.
    wire_headers += [("Host", parts.netloc), ("Accept-Encoding", "identity")]
    if isinstance(body, str):
        body = body.encode()
    return Wire(method, parts.path, parts.query, wire_headers, body or b"")


def capture(
    operation: str,
    region: str = REGION,
    token: str | None = None,
    at: datetime | None = None,
    **params: Any,
) -> Wire:
    """Call an MWAA operation with a real boto3 client; return what would hit the wire.

    ``at`` fixes botocore's signing clock (naive UTC, as botocore uses it).
    """
    client = boto3.client(
        "mwaa",
        region_name=region,
        endpoint_url=ENDPOINT,
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        aws_session_token=token,
        config=Config(inject_host_prefix=False, retries={"max_attempts": 1}),
    )
    sent: list[Wire] = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        sent.append(_to_wire(request.method, request.url, request.headers, request.body))
        return AWSResponse(request.url, 200, {}, _Stream())

    client.meta.events.register("before-send", before_send)
    if at is None:
        getattr(client, operation)(**params)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=at):
            getattr(client, operation)(**params)
    return sent[0]


def lookup(key: str) -> str | None:
    return SECRET if key == AKID else None


def check(wire: Wire, *, now: datetime | None = None, **kwargs: Any) -> str:
    options: dict[str, Any] = {
        "region": REGION,
        "service": "airflow",
        "lookup_secret": lookup,
        "now": now or wire.signed_at,
    }
    options.update(kwargs)
    return verify(wire.method, wire.path, wire.query, wire.headers, wire.body, **options)


def fails(wire: Wire, message: str, **kwargs: Any) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        check(wire, **kwargs)
    assert str(info.value) == message
    assert SECRET not in str(info.value)
    return info.value


OPERATIONS: dict[str, Callable[[], Wire]] = {
    "get": lambda: capture("get_environment", Name="etl"),
    "get-unicode": lambda: capture("get_environment", Name="my env ü/…"),
    "list": lambda: capture("list_environments", MaxResults=5, NextToken="a b+c/d=é"),
    "untag": lambda: capture(
        "untag_resource", ResourceArn=ARN, tagKeys=["team", "cost center", "b", "a", "ünï"]
    ),
    "untag-repeated": lambda: capture("untag_resource", ResourceArn=ARN, tagKeys=["a", "a"]),
    "tag": lambda: capture("tag_resource", ResourceArn=ARN, Tags={"team": "data", "x y": "ü"}),
    "list-tags": lambda: capture("list_tags_for_resource", ResourceArn=ARN),
    "create": lambda: capture(
        "create_environment",
        Name="etl",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/mwaa",
        SourceBucketArn="arn:aws:s3:::bucket",
        DagS3Path="dags",
        NetworkConfiguration={"SubnetIds": ["subnet-1", "subnet-2"]},
        Tags={"k": "v"},
    ),
    "delete": lambda: capture("delete_environment", Name="etl"),
    "session-token": lambda: capture("get_environment", token="FwoGZXIvYXdzE//token", Name="etl"),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_botocore_signed_requests_verify(name: str) -> None:
    wire = OPERATIONS[name]()
    assert check(wire) == AKID


def test_wire_shapes_are_what_the_tests_claim() -> None:
    untag = OPERATIONS["untag"]()
    assert untag.path.startswith("/tags/arn%3Aaws%3Aairflow%3Aus-east-1%3A")
    assert untag.query.count("tagKeys=") == 5
    assert "%20" in untag.query
    assert OPERATIONS["create"]().body.startswith(b"{")
    assert "x-amz-security-token" in OPERATIONS["session-token"]().header("Authorization")


def test_real_clock_is_the_default() -> None:
    wire = OPERATIONS["get"]()
    assert (
        verify(
            wire.method,
            wire.path,
            wire.query,
            wire.headers,
            wire.body,
            region=REGION,
            service="airflow",
            lookup_secret=lookup,
        )
        == AKID
    )


def test_asgi_bytes_are_accepted() -> None:
    wire = OPERATIONS["untag"]()
    assert (
        verify(
            wire.method,
            wire.path.encode(),
            wire.query.encode(),
            wire.headers,
            wire.body,
            region=REGION,
            service="airflow",
            lookup_secret=lookup,
            now=wire.signed_at,
        )
        == AKID
    )


def test_unsigned_headers_are_ignored() -> None:
    wire = OPERATIONS["get"]()
    noisy = replace(wire, headers=[*wire.headers, ("X-Forwarded-For", "10.0.0.1"), ("Via", "1.1")])
    assert check(noisy.with_header("User-Agent", "something else")) == AKID


def test_header_names_are_case_insensitive() -> None:
    wire = OPERATIONS["create"]()
    upper = replace(wire, headers=[(k.upper(), v) for k, v in wire.headers])
    assert check(upper) == AKID


def _sign_low_level(
    url: str, *, headers: dict[str, str], body: bytes = b"", token: str | None = None
) -> Wire:
    request = AWSRequest(method="POST", url=url, headers=headers, data=body)
    SigV4Auth(Credentials(AKID, SECRET, token), "airflow", REGION).add_auth(request)
    return _to_wire("POST", url, request.headers, body)


def test_low_level_signing_with_content_sha_and_token() -> None:
    body = b'{"a": 1}'
    wire = _sign_low_level(
        f"{ENDPOINT}/restapi/etl?b=2&a=1&a=0",
        headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()},
        body=body,
        token="session",
    )
    assert check(wire) == AKID
    fails(
        wire.with_header("X-Amz-Content-SHA256", "0" * 64),
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    )


def test_non_canonical_query_encoding_from_other_clients() -> None:
    # Signed with canonical encoding, sent with lower-case hex and unescaped ':'.
    wire = capture("untag_resource", ResourceArn=ARN, tagKeys=["a:b", "é"])
    sent = wire.query.replace("%3A", ":").replace("%C3%A9", "%c3%a9")
    assert sent != wire.query
    assert check(replace(wire, query=sent)) == AKID


# --- failures ---------------------------------------------------------------------------


def test_missing_authorization() -> None:
    err = fails(OPERATIONS["get"]().without_header("Authorization"), "Missing Authentication Token")
    assert (err.code, err.status) == ("MissingAuthenticationTokenException", 403)


def test_forged_signature() -> None:
    wire = OPERATIONS["get"]()
    auth = wire.header("Authorization")
    forged = auth[: -len("0" * 64)] + "0" * 64
    err = fails(wire.with_header("Authorization", forged), MISMATCH)
    assert (err.code, err.status) == ("InvalidSignatureException", 403)


def test_wrong_secret() -> None:
    wire = OPERATIONS["get"]()
    fails(wire, MISMATCH, lookup_secret=lambda key: "not-the-secret")


def test_unknown_key() -> None:
    err = fails(
        OPERATIONS["get"](),
        "The security token included in the request is invalid.",
        lookup_secret=lambda key: None,
    )
    assert err.code == "UnrecognizedClientException"


def test_signature_expired() -> None:
    wire = OPERATIONS["get"]()
    stamp = wire.header("X-Amz-Date")
    now = wire.signed_at + timedelta(minutes=60)
    fmt = "%Y%m%dT%H%M%SZ"
    fails(
        wire,
        f"Signature expired: {stamp} is now earlier than "
        f"{(now - timedelta(minutes=15)).strftime(fmt)} ({now.strftime(fmt)} - 15 min.)",
        now=now,
    )


def test_signature_expired_exact_message() -> None:
    wire = capture("get_environment", at=datetime(2026, 11, 24, 4, 0), Name="etl")
    now = datetime(2026, 11, 24, 5, 0, tzinfo=UTC)
    fails(
        wire,
        "Signature expired: 20261124T040000Z is now earlier than 20261124T044500Z "
        "(20261124T050000Z - 15 min.)",
        now=now,
    )


def test_signature_not_yet_current() -> None:
    wire = capture("get_environment", at=datetime(2026, 11, 24, 6, 0), Name="etl")
    fails(
        wire,
        "Signature not yet current: 20261124T060000Z is still later than 20261124T051500Z "
        "(20261124T050000Z + 15 min.)",
        now=datetime(2026, 11, 24, 5, 0),  # naive means UTC
    )


def test_skew_window_edges_are_allowed() -> None:
    wire = OPERATIONS["get"]()
    assert check(wire, now=wire.signed_at + timedelta(minutes=15)) == AKID
    assert check(wire, now=wire.signed_at - timedelta(minutes=15)) == AKID
    with pytest.raises(SignatureError, match="Signature expired"):
        check(wire, now=wire.signed_at + timedelta(minutes=15, seconds=1))
    with pytest.raises(SignatureError, match=r"5 min\.\)$"):
        check(wire, now=wire.signed_at + timedelta(minutes=6), max_skew=timedelta(minutes=5))


def test_wrong_region() -> None:
    fails(
        capture("get_environment", region="eu-west-1", Name="etl"),
        "Credential should be scoped to a valid region.",
    )


def test_wrong_service() -> None:
    wire = OPERATIONS["get"]()
    fails(wire, "Credential should be scoped to correct service: 'kafka'.", service="kafka")


def test_tampered_body() -> None:
    wire = OPERATIONS["create"]()
    fails(replace(wire, body=wire.body.replace(b"dags", b"evil")), MISMATCH)


def test_tampered_path() -> None:
    wire = OPERATIONS["untag"]()
    fails(replace(wire, path=wire.path.replace("etl", "prod")), MISMATCH)
    fails(replace(wire, path=wire.path + "#x"), MISMATCH)


def test_tampered_query() -> None:
    wire = OPERATIONS["untag"]()
    fails(replace(wire, query=wire.query + "&tagKeys=owner"), MISMATCH)
    fails(replace(wire, query=wire.query.replace("team", "tean")), MISMATCH)


def test_tampered_method_and_signed_header() -> None:
    wire = OPERATIONS["delete"]()
    fails(replace(wire, method="GET"), MISMATCH)
    fails(wire.with_header("Host", "evil.example:8080"), MISMATCH)


def test_date_not_matching_scope() -> None:
    signed = capture("get_environment", at=datetime(2020, 1, 1), Name="etl")
    wire = signed.with_header("X-Amz-Date", "20261124T050000Z")
    err = fails(
        wire,
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        "HTTP: '20200101' != '20261124', from '20261124T050000Z'.",
        now=datetime(2026, 11, 24, 5, 0, tzinfo=UTC),
    )
    assert err.status == 403


@pytest.mark.parametrize(
    ("authorization", "start"),
    [
        ("Bearer abc", "Authorization header requires 'Credential' parameter. "),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/airflow/aws4_request",
            "Authorization header requires 'Signature' parameter. "
            "Authorization header requires 'SignedHeaders' parameter.",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/us-east-1, SignedHeaders=host, Signature=00",
            "Credential should have the form",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/airflow/aws5_request, "
            "SignedHeaders=host, Signature=00",
            "Credential should be scoped with a valid terminator: 'aws4_request', not "
            "'aws5_request'.",
        ),
    ],
)
def test_malformed_authorization(authorization: str, start: str) -> None:
    wire = OPERATIONS["get"]().with_header("Authorization", authorization)
    with pytest.raises(SignatureError) as info:
        check(wire)
    assert str(info.value).startswith(start)
    assert (info.value.code, info.value.status) == ("IncompleteSignatureException", 400)


def test_failures_never_echo_the_authorization_header() -> None:
    wire = OPERATIONS["get"]()
    auth = wire.header("Authorization")
    secretish = "s3cr3t-" + "x" * 40
    for broken in (
        f"AWS4-HMAC-SHA256 Credential={secretish}/x, Garbage={secretish}",
        auth.replace("SignedHeaders=", "Signed="),
        f"{auth}, Extra={secretish}".replace("Signature=", "Sig="),
    ):
        with pytest.raises(SignatureError) as info:
            check(wire.with_header("Authorization", broken))
        assert secretish not in str(info.value) and "Authorization=" not in str(info.value)
        assert info.value.code == "IncompleteSignatureException"
    with pytest.raises(SignatureError) as info:
        check(wire.without_header("X-Amz-Date"), now=wire.signed_at)
    assert "Authorization=" not in str(info.value) and "Signature=" not in str(info.value)


def test_plus_in_the_query_is_a_space_for_signature_and_parser() -> None:
    """``+`` decodes as a space in the signature check and in the parser alike: a request
    signed for the tag key ``a+b`` (``%2B``) and sent as ``a+b`` would be parsed as the
    key ``a b``, so it must not verify; one signed for ``a b`` and sent with ``+`` does."""
    plus = capture("untag_resource", ResourceArn=ARN, tagKeys=["a+b"])
    assert plus.query.endswith("tagKeys=a%2Bb")
    fails(replace(plus, query=plus.query.replace("%2B", "+")), MISMATCH)
    space = capture("untag_resource", ResourceArn=ARN, tagKeys=["a b"])
    assert space.query.endswith("tagKeys=a%20b")
    assert check(replace(space, query=space.query.replace("%20", "+"))) == AKID
    assert decode_query("tagKeys=a+b&tagKeys=a%2Bb") == [("tagKeys", "a b"), ("tagKeys", "a+b")]


def test_missing_or_bad_date() -> None:
    wire = OPERATIONS["get"]()
    with pytest.raises(SignatureError, match="requires existence of either a 'X-Amz-Date'"):
        check(wire.without_header("X-Amz-Date"), now=wire.signed_at)
    with pytest.raises(SignatureError, match="ISO-8601 'basic format'. Got 'yesterday'"):
        check(wire.with_header("X-Amz-Date", "yesterday"), now=wire.signed_at)


def test_host_must_be_signed() -> None:
    wire = OPERATIONS["get"]()
    auth = wire.header("Authorization").replace("SignedHeaders=host;", "SignedHeaders=")
    with pytest.raises(SignatureError, match="'Host' or ':authority' must be a 'SignedHeader'"):
        check(wire.with_header("Authorization", auth))


def test_duplicate_authorization_rejected() -> None:
    wire = OPERATIONS["get"]()
    doubled = replace(
        wire, headers=[*wire.headers, ("authorization", wire.header("Authorization"))]
    )
    with pytest.raises(SignatureError):
        check(doubled)


def test_verify_is_fast() -> None:
    wire = OPERATIONS["untag"]()
    now = wire.signed_at
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        check(wire, now=now)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 0.0005, f"{per_call * 1e6:.0f} µs per verify"
