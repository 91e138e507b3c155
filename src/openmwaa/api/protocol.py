"""The MWAA rest-json wire format, driven by botocore's service model at run time.

Routes, member locations and types all come from the model, so a new botocore
that adds a field or an operation needs no change here. Parsing only turns
wire values into Python values of the member's type; constraints (required,
lengths, patterns, ranges) are checked by ``validation.py`` afterwards so both
the URI and the body get the same messages.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import unquote

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape, StructureShape

from openmwaa.api.sigv4 import decode_query
from openmwaa.service.documents import RawJson
from openmwaa.service.errors import RestApiException, ServiceError, ValidationException

SERVICE_NAME = "mwaa"


@cache
def service_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model(SERVICE_NAME)


class UnknownOperation(Exception):
    """No operation of the model answers this method and path."""


@dataclass(frozen=True)
class Route:
    operation: OperationModel
    method: str
    pattern: re.Pattern[str]
    labels: dict[str, str]
    """Regex group name -> input member name."""


def _compile_route(operation: OperationModel) -> Route:
    uri = operation.http["requestUri"].split("?", 1)[0]
    labels: dict[str, str] = {}
    regex = ""
    pos = 0
    for match in re.finditer(r"\{([^}]+)\}", uri):
        regex += re.escape(uri[pos : match.start()])
        name = match.group(1)
        greedy = name.endswith("+")
        name = name.rstrip("+")
        group = f"g{len(labels)}"
        member = next(
            (
                m
                for m, s in operation.input_shape.members.items()
                if s.serialization.get("location") == "uri"
                and s.serialization.get("name", m) == name
            ),
            name,
        )
        labels[group] = member
        regex += f"(?P<{group}>.+)" if greedy else f"(?P<{group}>[^/]+)"
        pos = match.end()
    regex += re.escape(uri[pos:])
    return Route(operation, operation.http["method"], re.compile(f"^{regex}$"), labels)


@cache
def routes() -> tuple[Route, ...]:
    model = service_model()
    return tuple(_compile_route(model.operation_model(name)) for name in model.operation_names)


def match(method: str, raw_path: str) -> tuple[OperationModel, dict[str, str]]:
    """Find the operation for a request; URI labels are returned percent-decoded."""
    for route in routes():
        if route.method != method:
            continue
        found = route.pattern.match(raw_path)
        if found:
            return route.operation, {
                route.labels[group]: unquote(value) for group, value in found.groupdict().items()
            }
    shown = raw_path if len(raw_path) <= 200 else raw_path[:197] + "..."
    raise UnknownOperation(f"No operation answers {method[:16]} {shown}")


# -- parsing ---------------------------------------------------------------


class _TypeError(Exception):
    def __init__(self, path: str, value: Any, expected: str) -> None:
        super().__init__(path)
        self.path, self.value, self.expected = path, value, expected


def _member_path(parent: str, member: str) -> str:
    name = member[:1].lower() + member[1:]
    return f"{parent}.{name}" if parent else name


def _coerce(shape: Shape, value: Any, path: str) -> Any:
    """Check a JSON value against its shape's type and convert what JSON can't carry."""
    kind = shape.type_name
    if value is None:
        return None
    if kind == "structure":
        if shape.metadata.get("document"):
            return value
        if not isinstance(value, dict):
            raise _TypeError(path, value, "a structure (JSON object)")
        assert isinstance(shape, StructureShape)
        out = {}
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                out[name] = _coerce(member, value[name], _member_path(path, name))
        return out
    if kind == "list":
        if not isinstance(value, list):
            raise _TypeError(path, value, "a list")
        return [
            _coerce(shape.member, item, f"{path}.{i}.member") for i, item in enumerate(value, 1)
        ]
    if kind == "map":
        if not isinstance(value, dict):
            raise _TypeError(path, value, "a map (JSON object)")
        return {k: _coerce(shape.value, v, f"{path}.{k}") for k, v in value.items()}
    if kind == "string":
        if not isinstance(value, str):
            raise _TypeError(path, value, "a string")
        return value
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _TypeError(path, value, "an integer")
        return value
    if kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _TypeError(path, value, "a number")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _TypeError(path, value, "a boolean")
        return value
    if kind == "timestamp":
        return _parse_timestamp(value, path)
    if kind == "blob":
        if not isinstance(value, str):
            raise _TypeError(path, value, "base64 text")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise _TypeError(path, value, "base64 text") from None
    return value


def _parse_timestamp(value: Any, path: str) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise _TypeError(path, value, "a timestamp") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _TypeError(path, value, "a timestamp") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise _TypeError(path, value, "a timestamp")


def _from_text(shape: Shape, text: str, path: str) -> Any:
    """Convert a URI, query or header value (always text) to the member's type."""
    kind = shape.type_name
    if kind in ("integer", "long"):
        if not re.fullmatch(r"[+-]?\d{1,18}", text):
            raise _TypeError(path, text, "an integer")
        return int(text)
    if kind in ("double", "float"):
        try:
            return float(text)
        except ValueError:
            raise _TypeError(path, text, "a number") from None
    if kind == "boolean":
        if text not in ("true", "false"):
            raise _TypeError(path, text, "true or false")
        return text == "true"
    if kind == "timestamp":
        return _parse_timestamp(text, path)
    return text


def parse_request(
    operation: OperationModel,
    labels: Mapping[str, str],
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
) -> dict[str, Any]:
    """Build the operation's input parameters, keyed by member name, from the wire."""
    shape = operation.input_shape
    if shape is None:
        return {}
    query: dict[str, list[str]] = {}
    try:  # decoded as the signature check decodes it: the signature covers what is parsed
        pairs = decode_query(raw_query)
    except UnicodeDecodeError:
        raise ValidationException("The query string is not valid UTF-8.") from None
    for key, value in pairs:
        query.setdefault(key, []).append(value)
    params: dict[str, Any] = {}
    try:
        payload: Any = {}
        has_body_members = any(not m.serialization.get("location") for m in shape.members.values())
        if has_body_members and body.strip():
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError) as e:  # not JSON, too deep, too long a number
                raise ValidationException(
                    f"The request body is not valid JSON: {e}. Send a JSON object."
                ) from None
            if not isinstance(payload, dict):
                raise ValidationException("The request body must be a JSON object.")
        for name, member in shape.members.items():
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            path = _member_path("", name)
            if location == "uri":
                if name in labels:
                    params[name] = _from_text(member, labels[name], path)
            elif location == "querystring":
                if wire in query:
                    if member.type_name == "list":
                        params[name] = [
                            _from_text(member.member, v, f"{path}.{i}.member")
                            for i, v in enumerate(query[wire], 1)
                        ]
                    else:
                        params[name] = _from_text(member, query[wire][0], path)
            elif location == "header":
                if wire.lower() in headers:
                    params[name] = _from_text(member, headers[wire.lower()], path)
            elif name in payload and payload[name] is not None:
                params[name] = _coerce(member, payload[name], path)
    except _TypeError as e:
        raise ValidationException(
            f"1 validation error detected: Value {_show(e.value)} at '{e.path}' failed to "
            f"satisfy constraint: Member must be {e.expected}"
        ) from None
    return params


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > 64:
        text = text[:61] + "..."
    return f"'{text}'"


# -- serializing -----------------------------------------------------------


def _to_wire(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if kind == "structure":
        if shape.metadata.get("document"):
            return value
        assert isinstance(shape, StructureShape)
        return {
            name: _to_wire(member, value[name])
            for name, member in shape.members.items()
            if value.get(name) is not None
        }
    if kind == "list":
        return [_to_wire(shape.member, v) for v in value]
    if kind == "map":
        return {k: _to_wire(shape.value, v) for k, v in value.items()}
    if kind == "timestamp":
        return value.timestamp() if isinstance(value, datetime) else value
    if kind == "blob":
        return base64.b64encode(value).decode()
    return value


Response = tuple[int, list[tuple[str, str]], bytes]


def serialize_response(
    operation: OperationModel, output: Mapping[str, Any] | None, request_id: str
) -> Response:
    shape = operation.output_shape
    headers = [("content-type", "application/json"), ("x-amzn-requestid", request_id)]
    body: dict[str, Any] = {}
    if shape is not None and output:
        for name, member in shape.members.items():
            value = output.get(name)
            if value is None:
                continue
            if member.serialization.get("location") == "header":
                headers.append((member.serialization.get("name", name).lower(), str(value)))
            else:
                body[member.serialization.get("name", name)] = _to_wire(member, value)
    status = int(operation.http.get("responseCode", 200))
    return status, headers, _dumps(body)


def _dumps(body: dict[str, Any]) -> bytes:
    """The body's JSON; a top-level RawJson member goes in as the text it holds."""
    if not any(isinstance(value, RawJson) for value in body.values()):
        return json.dumps(body, separators=(",", ":")).encode()
    members = [
        json.dumps(name).encode()
        + b":"
        + (value.data if isinstance(value, RawJson) else json.dumps(value).encode())
        for name, value in body.items()
    ]
    return b"{" + b",".join(members) + b"}"


def serialize_error(error: ServiceError, request_id: str) -> Response:
    body: dict[str, Any] = {"__type": error.code}
    if isinstance(error, RestApiException):
        body.update(RestApiStatusCode=error.status_code, RestApiResponse=error.response)
    else:
        body[error.message_member] = error.message
    headers = [
        ("content-type", "application/json"),
        ("x-amzn-requestid", request_id),
        ("x-amzn-errortype", error.code),
    ]
    return error.status, headers, json.dumps(body, separators=(",", ":")).encode()


def error_response(code: str, status: int, message: str, request_id: str) -> Response:
    """An error outside the model's exceptions (e.g. an unknown operation)."""
    headers = [
        ("content-type", "application/json"),
        ("x-amzn-requestid", request_id),
        ("x-amzn-errortype", code),
    ]
    return status, headers, json.dumps({"__type": code, "message": message}).encode()


def header_map(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
