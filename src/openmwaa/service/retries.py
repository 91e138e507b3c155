"""How the reconciler backs off a failing step, and how failures read in LastUpdate.

Kept apart from the loop so the policy (per environment, reset by any new request or
status) and the wording users see can be read and tested on their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from openmwaa.runtime.base import RuntimeFailure
from openmwaa.store.models import EnvironmentRow

ROLLBACK_NOTE = " Rolling back failed too"
"""Starts what a failing rollback adds to LastUpdate.Error.ErrorMessage."""


class RetryLater(Exception):
    """A step recorded its own failure and wants to run again after the backoff."""


@dataclass
class _Retry:
    generation: int
    status: str
    failures: int
    not_before: float


class Retries:
    """Failed steps per environment: how often in a row, and when to try again.

    The wait doubles from ``base`` up to ``maximum``. It belongs to one generation and
    status: a new request (or a status the step did not write) starts afresh at once.
    """

    def __init__(self, base: float, maximum: float) -> None:
        self._base = base
        self._max = max(base, maximum)
        self._retries: dict[str, _Retry] = {}

    def due(self, row: EnvironmentRow, now: float) -> bool:
        retry = self._retries.get(row.name)
        if retry is None:
            return True
        if (retry.generation, retry.status) != (row.generation, row.status):
            del self._retries[row.name]
            return True
        return now >= retry.not_before

    def failed(self, row: EnvironmentRow, status: str | None = None) -> tuple[int, float]:
        """Count one more failure of ``row``'s step (which leaves it ``status``, by default
        its current one); (failures in a row, seconds until the next try)."""
        retry = self._retries.get(row.name)
        failures = 1
        if retry is not None and (retry.generation, retry.status) == (row.generation, row.status):
            failures = retry.failures + 1
        delay = min(self._max, self._base * 2 ** min(failures - 1, 16))
        self._retries[row.name] = _Retry(
            row.generation, status or row.status, failures, time.monotonic() + delay
        )
        return failures, delay

    def moved(self, name: str, status: str) -> None:
        """The failing step wrote ``status``: the backoff goes on in it."""
        retry = self._retries.get(name)
        if retry is not None:
            retry.status = status

    def succeeded(self, name: str) -> None:
        self._retries.pop(name, None)

    def keep_only(self, names: Iterable[str]) -> None:
        for name in set(self._retries) - set(names):
            del self._retries[name]


def as_failure(error: Exception) -> RuntimeFailure:
    if isinstance(error, RuntimeFailure):
        return error
    return RuntimeFailure("INTERNAL_ERROR", f"{type(error).__name__}: {error}")


def failed(failure: RuntimeFailure, source: str) -> dict[str, Any]:
    """LastUpdate for a failed create or update."""
    return {
        "Status": "FAILED",
        "CreatedAt": datetime.now(UTC).timestamp(),
        "Source": source,
        "Error": {"ErrorCode": failure.code, "ErrorMessage": str(failure)[:1024] or failure.code},
    }


def rollback_failed(
    last_update: dict[str, Any] | None, failure: RuntimeFailure, failures: int, delay: float
) -> dict[str, Any]:
    """LastUpdate saying the update failed and so, ``failures`` times, did its rollback."""
    last = dict(last_update or {})
    error = dict(last.get("Error") or {"ErrorCode": failure.code, "ErrorMessage": ""})
    note = (
        f"{ROLLBACK_NOTE} ({failures} attempt{'s' if failures > 1 else ''}, retrying in "
        f"{delay:.0f} s): {failure.code}: {failure}"
    )
    error["ErrorMessage"] = (_base_message(error) + note)[:1024]
    last.update(Status="FAILED", Error=error)
    return last


def rolled_back(last_update: dict[str, Any] | None) -> dict[str, Any]:
    """LastUpdate once the rollback succeeded: the update's own failure only."""
    last = dict(last_update or {})
    if "Error" in last:
        last["Error"] = {**last["Error"], "ErrorMessage": _base_message(last["Error"])}
    return last


def _base_message(error: dict[str, Any]) -> str:
    return str(error.get("ErrorMessage", "")).split(ROLLBACK_NOTE)[0]
