"""IAM-style identity policy parsing and evaluation."""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

import pytest

from openmwaa.service.policies import (
    Decision,
    PolicyError,
    denied_message,
    evaluate,
    parse_policy,
)

ENV = "arn:aws:airflow:us-east-1:123456789012:environment/etl"
OTHER_ENV = "arn:aws:airflow:us-east-1:123456789012:environment/prod"
ADMIN_ROLE = "arn:aws:airflow:us-east-1:123456789012:role/etl/Admin"
USER = "arn:aws:iam::123456789012:user/alice"


def policy(*statements: dict[str, Any], version: str | None = "2012-10-17") -> Any:
    doc: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        doc["Version"] = version
    return parse_policy(doc)


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


@pytest.mark.parametrize(
    ("pattern", "action", "expected"),
    [
        ("*", "airflow:GetEnvironment", True),
        ("airflow:*", "airflow:GetEnvironment", True),
        ("airflow:*", "s3:GetObject", False),
        ("airflow:Get*", "airflow:GetEnvironment", True),
        ("airflow:Get*", "airflow:ListEnvironments", False),
        ("airflow:get*", "AIRFLOW:GETENVIRONMENT", True),
        ("airflow:GetEnvironment", "airflow:getenvironment", True),
        ("airflow:?etEnvironment", "airflow:GetEnvironment", True),
        ("airflow:?etEnvironment", "airflow:GGetEnvironment", False),
        ("airflow:*Environment", "airflow:CreateEnvironment", True),
        ("airflow:*Environment", "airflow:ListEnvironments", False),
        ("airflow:Create*Token", "airflow:CreateCliToken", True),
        ("airflow:GetEnvironment", "airflow:GetEnvironments", False),
    ],
)
def test_action_wildcards_and_case(pattern: str, action: str, expected: bool) -> None:
    result = evaluate([policy(allow(pattern))], action, ENV)
    assert result is (Decision.ALLOW if expected else Decision.IMPLICIT_DENY)


@pytest.mark.parametrize(
    ("pattern", "resource", "expected"),
    [
        ("*", ENV, True),
        ("arn:aws:airflow:us-east-1:123456789012:environment/*", ENV, True),
        ("arn:aws:airflow:us-east-1:123456789012:environment/*", ADMIN_ROLE, False),
        ("arn:aws:airflow:*:123456789012:environment/etl", ENV, True),
        ("arn:aws:airflow:us-east-1:123456789012:environment/ETL", ENV, False),
        ("arn:aws:airflow:us-east-1:123456789012:environment/et?", ENV, True),
        ("arn:aws:airflow:us-east-1:123456789012:environment/e?", ENV, False),
        ("arn:aws:airflow:us-east-1:123456789012:role/etl/*", ADMIN_ROLE, True),
        ("arn:aws:airflow:us-east-1:123456789012:role/*/Admin", ADMIN_ROLE, True),
        ("arn:aws:airflow:us-east-1:123456789012:role/etl/admin", ADMIN_ROLE, False),
        ("arn:aws:airflow:*", ADMIN_ROLE, True),
        # Regex metacharacters in the pattern are literal.
        ("arn:aws:airflow:us-east-1:123456789012:environment/e.l", ENV, False),
    ],
)
def test_resource_wildcards_are_case_sensitive(pattern: str, resource: str, expected: bool) -> None:
    result = evaluate([policy(allow("airflow:*", pattern))], "airflow:GetEnvironment", resource)
    assert result is (Decision.ALLOW if expected else Decision.IMPLICIT_DENY)


def test_action_and_resource_lists() -> None:
    p = policy(allow(["airflow:GetEnvironment", "airflow:ListEnvironments"], [ENV, OTHER_ENV]))
    assert evaluate([p], "airflow:ListEnvironments", OTHER_ENV) is Decision.ALLOW
    assert evaluate([p], "airflow:DeleteEnvironment", ENV) is Decision.IMPLICIT_DENY
    assert evaluate([p], "airflow:GetEnvironment", ADMIN_ROLE) is Decision.IMPLICIT_DENY


def test_explicit_deny_wins_across_statements_and_policies() -> None:
    admin = policy(allow("*"))
    no_delete = policy(deny("airflow:Delete*", ENV))
    assert evaluate([admin, no_delete], "airflow:DeleteEnvironment", ENV) is Decision.EXPLICIT_DENY
    assert evaluate([no_delete, admin], "airflow:DeleteEnvironment", ENV) is Decision.EXPLICIT_DENY
    assert evaluate([admin, no_delete], "airflow:DeleteEnvironment", OTHER_ENV) is Decision.ALLOW
    same = policy(allow("airflow:*"), deny("airflow:CreateWebLoginToken"))
    assert evaluate([same], "airflow:CreateWebLoginToken", ENV) is Decision.EXPLICIT_DENY
    assert evaluate([same], "airflow:CreateCliToken", ENV) is Decision.ALLOW


def test_no_policies_is_implicit_deny() -> None:
    assert evaluate([], "airflow:GetEnvironment", ENV) is Decision.IMPLICIT_DENY
    only_deny = policy(deny("s3:*"))
    assert evaluate([only_deny], "airflow:GetEnvironment", ENV) is Decision.IMPLICIT_DENY


def test_not_action() -> None:
    p = policy(
        {"Effect": "Allow", "NotAction": ["airflow:Delete*", "airflow:Create*"], "Resource": "*"}
    )
    assert evaluate([p], "airflow:GetEnvironment", ENV) is Decision.ALLOW
    assert evaluate([p], "airflow:deleteEnvironment", ENV) is Decision.IMPLICIT_DENY
    d = policy(allow("*"), {"Effect": "Deny", "NotAction": "airflow:Get*", "Resource": ENV})
    assert evaluate([d], "airflow:GetEnvironment", ENV) is Decision.ALLOW
    assert evaluate([d], "airflow:UpdateEnvironment", ENV) is Decision.EXPLICIT_DENY
    assert evaluate([d], "airflow:UpdateEnvironment", OTHER_ENV) is Decision.ALLOW


def test_not_resource() -> None:
    p = policy({"Effect": "Allow", "Action": "airflow:*", "NotResource": [OTHER_ENV]})
    assert evaluate([p], "airflow:GetEnvironment", ENV) is Decision.ALLOW
    assert evaluate([p], "airflow:GetEnvironment", OTHER_ENV) is Decision.IMPLICIT_DENY
    d = policy(
        allow("*"),
        {"Effect": "Deny", "Action": "*", "NotResource": "arn:aws:airflow:*:*:environment/etl"},
    )
    assert evaluate([d], "airflow:GetEnvironment", ENV) is Decision.ALLOW
    assert evaluate([d], "airflow:GetEnvironment", OTHER_ENV) is Decision.EXPLICIT_DENY


def test_parse_accepts_json_text_single_statement_and_versions() -> None:
    text = json.dumps(
        {"Version": "2012-10-17", "Id": "x", "Statement": {"Sid": "A1", **allow("*")}}
    )
    assert evaluate([parse_policy(text)], "airflow:GetEnvironment", ENV) is Decision.ALLOW
    for version in ("2008-10-17", None):
        p = policy(allow("airflow:Get*", "arn:aws:airflow:*:*:environment/${x}"), version=version)
        assert evaluate([p], "airflow:GetEnvironment", ENV) is Decision.IMPLICIT_DENY
    assert policy(allow("*"), version=None).version == "2008-10-17"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ({"Version": "2012-10-17"}, "requires a Statement"),
        ({"Version": "2020-01-01", "Statement": [allow("*")]}, "Version must be"),
        ({"Statement": [allow("*")], "Extra": 1}, "unsupported key 'Extra'"),
        ({"Statement": []}, "non-empty list"),
        ({"Statement": "Allow"}, "non-empty list"),
        ({"Statement": ["Allow"]}, "Statement[0] must be a JSON object"),
        ({"Statement": [allow("*", Condition={"Bool": {}})]}, "Condition is not supported"),
        ({"Statement": [allow("*", Principal="*")]}, "must not specify a Principal"),
        ({"Statement": [allow("*", Foo=1)]}, "unsupported key 'Foo'"),
        ({"Statement": [{"Effect": "allow", "Action": "*", "Resource": "*"}]}, "Effect must be"),
        ({"Statement": [{"Action": "*", "Resource": "*"}]}, "Effect must be"),
        (
            {"Statement": [{"Effect": "Allow", "Resource": "*"}]},
            "exactly one of Action or NotAction",
        ),
        (
            {"Statement": [{"Effect": "Allow", "Action": "*", "NotAction": "*", "Resource": "*"}]},
            "exactly one of Action or NotAction",
        ),
        (
            {"Statement": [{"Effect": "Allow", "Action": "*"}]},
            "exactly one of Resource or NotResource",
        ),
        ({"Statement": [allow([])]}, "Action must not be empty"),
        ({"Statement": [allow(["airflow:Get*", 3])]}, "Action must be a string or a list"),
        ({"Statement": [allow("GetEnvironment")]}, 'must be "*" or "<service>:<action>"'),
        ({"Statement": [allow("airflow:")]}, 'must be "*" or "<service>:<action>"'),
        ({"Statement": [allow("*", "environment/etl")]}, 'must be an ARN or "*"'),
        ({"Statement": [allow("*", Sid="not ok!")]}, "Sid must be alphanumeric"),
        ({"Statement": [allow("*", Sid="A"), allow("*", Sid="A")]}, "must be unique"),
        (
            {
                "Version": "2012-10-17",
                "Statement": [allow("*", "arn:aws:airflow:*:*:environment/${aws:username}")],
            },
            "policy variables",
        ),
    ],
)
def test_invalid_documents(doc: Any, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_denied_messages() -> None:
    assert denied_message(USER, "airflow:GetEnvironment", ENV, Decision.IMPLICIT_DENY) == (
        "User: arn:aws:iam::123456789012:user/alice is not authorized to perform: "
        "airflow:GetEnvironment on resource: "
        "arn:aws:airflow:us-east-1:123456789012:environment/etl "
        "because no identity-based policy allows the airflow:GetEnvironment action"
    )
    assert denied_message(USER, "airflow:GetEnvironment", ENV, Decision.EXPLICIT_DENY) == (
        "User: arn:aws:iam::123456789012:user/alice is not authorized to perform: "
        "airflow:GetEnvironment on resource: "
        "arn:aws:airflow:us-east-1:123456789012:environment/etl "
        "with an explicit deny in an identity-based policy"
    )
    with pytest.raises(ValueError):
        denied_message(USER, "airflow:GetEnvironment", ENV, Decision.ALLOW)


def test_evaluation_is_cheap() -> None:
    policies = [
        policy(
            allow(
                ["airflow:Get*", "airflow:List*"], "arn:aws:airflow:*:123456789012:environment/*"
            ),
            deny("airflow:Delete*", OTHER_ENV),
            {"Effect": "Allow", "NotAction": "s3:*", "NotResource": OTHER_ENV},
        )
        for _ in range(5)
    ]
    n = 10000
    start = time.perf_counter()
    for _ in range(n):
        evaluate(policies, "airflow:UpdateEnvironment", ENV)
    assert (time.perf_counter() - start) / n < 0.0001


def _reference_glob(pattern: str, value: str) -> bool:
    """IAM's wildcards as the obvious backtracking regex (fine for short values)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def test_wildcards_match_as_the_plain_glob_does() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        pattern = "arn:" + "".join(rng.choice("ab:*?/") for _ in range(rng.randint(0, 7)))
        value = "arn:" + "".join(rng.choice("ab:/") for _ in range(rng.randint(0, 9)))
        expected = Decision.ALLOW if _reference_glob(pattern, value) else Decision.IMPLICIT_DENY
        assert evaluate([policy(allow("airflow:*", pattern))], "airflow:X", value) is expected, (
            pattern,
            value,
        )


def test_hostile_resources_are_matched_in_linear_time() -> None:
    """A caller picks the resource (a TagResource ARN up to 1224 characters): a policy
    with several stars must not make matching it backtrack (a regex took seconds)."""
    policies = [policy(allow("airflow:*", "arn:*:*:*:*x"), deny("airflow:*", "arn:?*:*?:*:*y"))]
    resource = "arn:" + ":" * 600
    start = time.perf_counter()
    assert evaluate(policies, "airflow:TagResource", resource) is Decision.IMPLICIT_DENY
    assert time.perf_counter() - start < 0.05
