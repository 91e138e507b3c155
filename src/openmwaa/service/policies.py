"""IAM-style identity policies: parse once, evaluate on every request.

Only the subset of the IAM grammar that can be decided from (action, resource) is
accepted; anything else (Condition, Principal, policy variables) is refused at parse
time rather than silently ignored, so a policy never grants more than it reads as.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "Decision",
    "Policy",
    "PolicyError",
    "Statement",
    "denied_message",
    "evaluate",
    "parse_policy",
]

_VERSIONS = ("2012-10-17", "2008-10-17")
_STATEMENT_KEYS = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource"}
_SID = re.compile(r"[A-Za-z0-9]*")
_ACTION = re.compile(r"[A-Za-z0-9-]+:[A-Za-z0-9*?]+")


class PolicyError(ValueError):
    """The policy document is invalid; the message says what to fix."""


class Decision(enum.Enum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit_deny"
    IMPLICIT_DENY = "implicit_deny"


class _Matcher:
    """One Action/Resource pattern, compiled once.

    IAM wildcards: ``*`` is any run of characters (``:`` and ``/`` included), ``?`` one.
    Not one backtracking regex: ``arn:*:*:*x`` against a long resource of colons takes
    a backtracking engine time exponential in the stars, and resources come from callers.
    The pattern is cut at its stars into fixed-length pieces; the first must start the
    value, the last end it, and the middle ones are found leftmost-first in between,
    which decides a glob exactly in time linear in the value per piece.
    """

    __slots__ = ("_any", "_exact", "_pieces", "_ignore_case")

    def __init__(self, pattern: str, ignore_case: bool) -> None:
        self._any = pattern == "*"
        self._ignore_case = ignore_case
        self._exact = pattern.lower() if ignore_case else pattern
        self._pieces: tuple[tuple[re.Pattern[str], int], ...] | None = None
        if "*" in pattern or "?" in pattern:
            self._pieces = tuple((_piece(p, ignore_case), len(p)) for p in pattern.split("*"))

    def matches(self, value: str) -> bool:
        if self._any:
            return True
        if self._pieces is None:
            return (value.lower() if self._ignore_case else value) == self._exact
        (first, start), *middle = self._pieces
        if not middle:  # no star: '?' only
            return first.fullmatch(value) is not None
        (last, tail), middle = middle[-1], middle[:-1]
        end = len(value) - tail
        if end < start or first.match(value) is None or last.fullmatch(value, end) is None:
            return False
        for piece, _ in middle:
            found = piece.search(value, start, end)
            if found is None:
                return False
            start = found.end()
        return True


@lru_cache(maxsize=4096)
def _piece(text: str, ignore_case: bool) -> re.Pattern[str]:
    """A star-free piece of a pattern: ``?`` is any one character, the rest literal."""
    regex = "".join("." if c == "?" else re.escape(c) for c in text)
    return re.compile(regex, (re.IGNORECASE | re.DOTALL) if ignore_case else re.DOTALL)


@dataclass(frozen=True)
class Statement:
    effect: str  # "Allow" | "Deny"
    actions: tuple[_Matcher, ...]
    not_action: bool
    resources: tuple[_Matcher, ...]
    not_resource: bool
    sid: str | None = None

    def applies(self, action_lower: str, resource: str) -> bool:
        hit = any(m.matches(action_lower) for m in self.actions)
        if hit == self.not_action:
            return False
        return any(m.matches(resource) for m in self.resources) != self.not_resource


@dataclass(frozen=True)
class Policy:
    version: str
    statements: tuple[Statement, ...]


def _strings(statement: dict[str, Any], key: str, where: str) -> list[str]:
    value = statement[key]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise PolicyError(f"{where}: {key} must be a string or a list of strings.")
    if not items:
        raise PolicyError(f"{where}: {key} must not be empty.")
    return items


def _one_of(statement: dict[str, Any], key: str, where: str) -> tuple[list[str], bool]:
    negated = f"Not{key}"
    if (key in statement) == (negated in statement):
        raise PolicyError(f"{where}: exactly one of {key} or {negated} is required.")
    name = key if key in statement else negated
    return _strings(statement, name, where), name == negated


def _check_variables(values: list[str], version: str, where: str) -> None:
    if version == "2012-10-17" and any("${" in v for v in values):
        raise PolicyError(f"{where}: policy variables (${{...}}) are not supported.")


def _parse_statement(raw: Any, where: str, version: str) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a JSON object.")
    if "Condition" in raw:
        raise PolicyError("Condition is not supported")
    if "Principal" in raw or "NotPrincipal" in raw:
        raise PolicyError(f"{where}: an identity-based policy must not specify a Principal.")
    unknown = sorted(set(raw) - _STATEMENT_KEYS)
    if unknown:
        raise PolicyError(
            f"{where}: unsupported key {unknown[0]!r}; allowed keys are "
            "Sid, Effect, Action, NotAction, Resource, NotResource."
        )
    sid = raw.get("Sid")
    if sid is not None and (not isinstance(sid, str) or not _SID.fullmatch(sid)):
        raise PolicyError(f"{where}: Sid must be alphanumeric.")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f'{where}: Effect must be "Allow" or "Deny", not {effect!r}.')
    actions, not_action = _one_of(raw, "Action", where)
    for action in actions:
        if action != "*" and not _ACTION.fullmatch(action):
            raise PolicyError(
                f'{where}: action {action!r} must be "*" or "<service>:<action>", '
                'e.g. "airflow:GetEnvironment".'
            )
    resources, not_resource = _one_of(raw, "Resource", where)
    for resource in resources:
        if resource != "*" and not resource.startswith("arn:"):
            raise PolicyError(f'{where}: resource {resource!r} must be an ARN or "*".')
    _check_variables(resources, version, where)
    return Statement(
        effect=effect,
        actions=tuple(_Matcher(a, ignore_case=True) for a in actions),
        not_action=not_action,
        resources=tuple(_Matcher(r, ignore_case=False) for r in resources),
        not_resource=not_resource,
        sid=sid,
    )


def parse_policy(doc: str | dict[str, Any]) -> Policy:
    """Validate an identity policy document and compile its patterns."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"Policy document is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PolicyError("Policy document must be a JSON object.")
    unknown = sorted(set(doc) - {"Version", "Id", "Statement"})
    if unknown:
        raise PolicyError(
            f"Policy document has unsupported key {unknown[0]!r}; "
            "allowed keys are Version, Id, Statement."
        )
    version = doc.get("Version", "2008-10-17")
    if version not in _VERSIONS:
        raise PolicyError(f'Version must be "2012-10-17" or "2008-10-17", not {version!r}.')
    if "Id" in doc and not isinstance(doc["Id"], str):
        raise PolicyError("Id must be a string.")
    if "Statement" not in doc:
        raise PolicyError("Policy document requires a Statement.")
    raw = doc["Statement"]
    raws = [raw] if isinstance(raw, dict) else raw
    if not isinstance(raws, list) or not raws:
        raise PolicyError("Statement must be an object or a non-empty list of objects.")
    statements = tuple(_parse_statement(s, f"Statement[{i}]", version) for i, s in enumerate(raws))
    sids = [s.sid for s in statements if s.sid]
    if len(sids) != len(set(sids)):
        raise PolicyError("Statement IDs (Sid) in a single policy must be unique.")
    return Policy(version=version, statements=statements)


def evaluate(policies: Sequence[Policy], action: str, resource: str) -> Decision:
    """IAM's identity-policy logic: any matching Deny wins, else any Allow, else implicit deny."""
    action_lower = action.lower()
    allowed = False
    for policy in policies:
        for statement in policy.statements:
            if statement.applies(action_lower, resource):
                if statement.effect == "Deny":
                    return Decision.EXPLICIT_DENY
                allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


def denied_message(principal_arn: str, action: str, resource: str, decision: Decision) -> str:
    """The AccessDenied message IAM gives for ``decision``."""
    prefix = f"User: {principal_arn} is not authorized to perform: {action} on resource: {resource}"
    if decision is Decision.EXPLICIT_DENY:
        return f"{prefix} with an explicit deny in an identity-based policy"
    if decision is Decision.IMPLICIT_DENY:
        return f"{prefix} because no identity-based policy allows the {action} action"
    raise ValueError("an allowed request has no denial message")
