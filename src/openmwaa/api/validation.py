"""Constraint checks from botocore's model: required, enum, length, pattern, range.

Messages follow AWS's own ("1 validation error detected: Value 'x' at 'name'
failed to satisfy constraint: Member must ..."). Patterns are the model's,
matched against the whole value (as MWAA does: a name like ``../x`` is refused,
not found inside). Values of sensitive members are never echoed.

Lengths are checked before patterns and a pattern only runs on a value within the
member's maximum: several of the model's patterns (``.*X.*``, ``\\w+.*``) take
quadratic time, and a 256 KB value once held the event loop for 13 s. A pattern
that still runs longer than ``PATTERN_TIMEOUT`` counts as not matched.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import regex
from botocore.model import Shape, StructureShape

from openmwaa.service.errors import ValidationException

PATTERN_TIMEOUT = 0.05
"""Seconds one pattern may take on one value (a safety net: within the maxima of the
model, the slowest pattern takes about 2 ms)."""


@cache
def _pattern(expr: str) -> regex.Pattern[str]:
    return regex.compile(expr)


def _matches(expr: str, value: str) -> bool:
    try:
        return _pattern(expr).fullmatch(value, timeout=PATTERN_TIMEOUT) is not None
    except TimeoutError:
        return False


def _value_text(shape: Shape, value: Any) -> str:
    if shape.metadata.get("sensitive"):
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > 64:
        text = text[:61] + "..."
    return f"'{text}' "


class _Collector:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, shape: Shape, value: Any, path: str, constraint: str) -> None:
        shown = "null " if value is None else _value_text(shape, value)
        self.errors.append(f"Value {shown}at '{path}' failed to satisfy constraint: {constraint}")


def _scalar_constraints(shape: Shape, value: Any) -> list[str]:
    meta = shape.metadata
    out: list[str] = []
    enum = getattr(shape, "enum", None)
    if shape.type_name == "string":
        if enum and value not in enum:
            out.append(f"Member must satisfy enum value set: [{', '.join(enum)}]")
        if "min" in meta and len(value) < meta["min"]:
            out.append(f"Member must have length greater than or equal to {meta['min']}")
        too_long = "max" in meta and len(value) > meta["max"]
        if too_long:
            out.append(f"Member must have length less than or equal to {meta['max']}")
        elif "pattern" in meta and not _matches(meta["pattern"], value):
            out.append(f"Member must satisfy regular expression pattern: {meta['pattern']}")
    elif shape.type_name in ("integer", "long", "double", "float"):
        if "min" in meta and value < meta["min"]:
            out.append(f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            out.append(f"Member must have value less than or equal to {meta['max']}")
    elif shape.type_name in ("list", "map"):
        if "min" in meta and len(value) < meta["min"]:
            out.append(f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            out.append(f"Member must have length less than or equal to {meta['max']}")
    return out


def _walk(shape: Shape, value: Any, path: str, out: _Collector) -> None:
    if value is None:  # a JSON null inside a list
        out.fail(shape, None, path, "Member must not be null")
        return
    for constraint in _scalar_constraints(shape, value):
        out.fail(shape, value, path, constraint)
    kind = shape.type_name
    if kind == "structure" and not shape.metadata.get("document"):
        assert isinstance(shape, StructureShape)
        for name in shape.required_members:
            if value.get(name) is None:
                out.fail(shape.members[name], None, _path(path, name), "Member must not be null")
        for name, member in shape.members.items():
            if value.get(name) is not None:
                _walk(member, value[name], _path(path, name), out)
    elif kind == "list":
        for i, item in enumerate(value, 1):
            _walk(shape.member, item, f"{path}.{i}.member", out)
    elif kind == "map":
        key_shape, value_shape = shape.key, shape.value
        for key, item in value.items():
            key_errors = _scalar_constraints(key_shape, key)
            if key_errors:
                out.fail(
                    shape,
                    value,
                    path,
                    f"Map keys must satisfy constraint: [{', '.join(key_errors)}]",
                )
            value_errors = (
                ["Member must not be null"]
                if item is None
                else _scalar_constraints(value_shape, item)
            )
            if value_errors:
                out.fail(
                    shape,
                    value,
                    path,
                    f"Map value must satisfy constraint: [{', '.join(value_errors)}]",
                )


def _path(parent: str, member: str) -> str:
    name = member[:1].lower() + member[1:]
    return f"{parent}.{name}" if parent else name


def validate(shape: StructureShape | None, params: dict[str, Any]) -> None:
    """Raise ValidationException listing every violated constraint of the input."""
    if shape is None:
        return
    out = _Collector()
    _walk(shape, params, "", out)
    if out.errors:
        count = len(out.errors)
        noun = "error" if count == 1 else "errors"
        raise ValidationException(f"{count} validation {noun} detected: {'; '.join(out.errors)}")


def validate_labels(shape: StructureShape | None, labels: dict[str, str]) -> None:
    """Check the URI labels alone (lengths, then patterns), so that they can be used to
    authorize the caller before the rest of the request is parsed."""
    if shape is None:
        return
    errors = [
        f"Value {_value_text(shape.members[name], value)}at '{_path('', name)}' failed to "
        f"satisfy constraint: {constraint}"
        for name, value in labels.items()
        if name in shape.members
        for constraint in _scalar_constraints(shape.members[name], value)
    ]
    if errors:
        noun = "error" if len(errors) == 1 else "errors"
        raise ValidationException(f"{len(errors)} validation {noun} detected: {'; '.join(errors)}")
