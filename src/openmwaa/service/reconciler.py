"""The one owner of every environment's lifecycle.

API calls write the wanted state; this loop reads the store and moves each
environment with the backend, one worker per environment at a time. Every
step ends in a compare-and-set on the environment's generation, so a newer
request (a delete during a create) is never overwritten, and after a restart
of the control plane the loop simply finds each environment where it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from openmwaa.runtime.base import Backend, EnvironmentSpec, RuntimeFailure
from openmwaa.service.environments import Environments
from openmwaa.store.db import Store
from openmwaa.store.models import EnvironmentRow

log = logging.getLogger(__name__)

UNHEALTHY_CHECKS = 2
"""Consecutive failed health checks before an environment is UNAVAILABLE: one slow
answer on a loaded host is not an outage."""


class Reconciler:
    def __init__(
        self,
        store: Store,
        backend: Backend,
        environments: Environments,
        *,
        interval: float = 2.0,
        start_timeout: float = 600.0,
        scaling_status: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        self._store = store
        self._backend = backend
        self._environments = environments
        self._interval = interval
        self._start_timeout = start_timeout
        self._scaling_status = scaling_status or (lambda _name: None)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="reconcile")
        self._busy: dict[str, Future[None]] = {}
        self._unhealthy: dict[str, int] = {}
        self._started: set[str] = set()
        """Environments whose processes this control plane has (re)started since it began."""
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._backend.shutdown()

    # -- the loop -------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive any one bad pass
                log.exception("reconciler pass failed")
            self._wake.wait(self._interval)
            self._wake.clear()

    def tick(self) -> None:
        """One pass: hand every environment that needs work to a worker."""
        for row in self._store.environments():
            future = self._busy.get(row.name)
            if future is not None and not future.done():
                continue
            step = self._step_for(row)
            if step is not None:
                self._busy[row.name] = self._pool.submit(self._run, step, row)
        for name in [n for n, f in self._busy.items() if f.done()]:
            del self._busy[name]

    def _step_for(self, row: EnvironmentRow) -> Any:
        return {
            "CREATING": self._create,
            "UPDATING": self._update,
            "ROLLING_BACK": self._roll_back,
            "DELETING": self._delete,
            "AVAILABLE": self._watch,
            "UNAVAILABLE": self._watch,
            "UPDATE_FAILED": self._watch,
        }.get(row.status)

    def _run(self, step: Any, row: EnvironmentRow) -> None:
        if self._stopping.is_set():
            return
        try:
            step(row)
        except Exception:
            log.exception("environment %s: %s step failed", row.name, row.status)

    # -- steps ----------------------------------------------------------------

    def _progress(self, row: EnvironmentRow) -> Any:
        def report(line: str) -> None:
            log.info("environment %s: %s", row.name, line)
            self._store.update_environment(row.name, detail={"progress": line})

        return report

    def _bring_up(self, spec: EnvironmentSpec, row: EnvironmentRow, *, provision: bool) -> None:
        progress = self._progress(row)
        if provision:
            self._backend.provision(spec, progress)
        self._backend.start(spec, progress)
        self._started.add(row.name)
        self._wait_healthy(spec)

    def _wait_healthy(self, spec: EnvironmentSpec) -> None:
        deadline = time.monotonic() + self._start_timeout
        while True:
            health = self._backend.health(spec)
            if health.healthy:
                return
            if time.monotonic() > deadline or self._stopping.is_set():
                raise RuntimeFailure(
                    "START_TIMEOUT",
                    f"Airflow did not become healthy in {self._start_timeout:.0f} s: "
                    f"{health.detail or 'no detail'}",
                )
            time.sleep(0.25)

    def _create(self, row: EnvironmentRow) -> None:
        spec = self._environments.spec_of(row.name, row.spec)
        try:
            self._bring_up(spec, row, provision=True)
        except Exception as e:
            failure = _as_failure(e)
            log.warning("environment %s: create failed: %s", row.name, failure)
            self._backend.destroy(spec, self._progress(row))
            self._started.discard(row.name)
            self._store.update_environment(
                row.name,
                expect_generation=row.generation,
                status="CREATE_FAILED",
                last_update=_failed(failure, "CreateEnvironment"),
                detail=None,
            )
            return
        self._settle(row, "AVAILABLE", spec, applied=row.spec)

    def _update(self, row: EnvironmentRow) -> None:
        assert row.applied is not None
        old = self._environments.spec_of(row.name, row.applied)
        new = self._environments.spec_of(row.name, row.spec)
        try:
            self._backend.apply(old, new, self._progress(row))
            self._started.add(row.name)
            self._wait_healthy(new)
        except Exception as e:
            failure = _as_failure(e)
            log.warning("environment %s: update failed, rolling back: %s", row.name, failure)
            last = {**(row.last_update or {}), **_failed(failure, "UpdateEnvironment")}
            if self._store.update_environment(
                row.name,
                expect_generation=row.generation,
                status="ROLLING_BACK",
                last_update=last,
            ):
                row.status, row.last_update = "ROLLING_BACK", last
                self._roll_back(row)
            return
        last_update = {**(row.last_update or {}), "Status": "SUCCESS"}
        self._settle(row, "AVAILABLE", new, applied=row.spec, last_update=last_update)

    def _roll_back(self, row: EnvironmentRow) -> None:
        """Return to the configuration that ran before the failed update."""
        assert row.applied is not None
        failed = self._environments.spec_of(row.name, row.spec)
        old = self._environments.spec_of(row.name, row.applied)
        try:
            self._backend.apply(failed, old, self._progress(row))
            self._wait_healthy(old)
            status = "UPDATE_FAILED"
        except Exception:
            log.exception("environment %s: rollback failed", row.name)
            status = "UNAVAILABLE"
        self._settle(row, status, old, spec=row.applied)

    def _settle(
        self, row: EnvironmentRow, status: str, running: EnvironmentSpec, **values: Any
    ) -> None:
        """End a step: the new status, unless a newer request changed the environment."""
        self._store.update_environment(
            row.name,
            expect_generation=row.generation,
            status=status,
            webserver_url=self._backend.webserver_url(running),
            detail=None,
            **values,
        )

    def _delete(self, row: EnvironmentRow) -> None:
        config = row.applied or row.spec
        spec = self._environments.spec_of(row.name, config)
        self._backend.destroy(spec, self._progress(row))
        self._started.discard(row.name)
        self._unhealthy.pop(row.name, None)
        self._store.delete_environment(row.name)

    def _watch(self, row: EnvironmentRow) -> None:
        """Keep a running environment running, and its status true to what runs."""
        assert row.applied is not None
        spec = self._environments.spec_of(row.name, row.applied)
        if row.name not in self._started:
            self._backend.start(spec, self._progress(row))
            self._started.add(row.name)
        health = self._backend.health(spec)
        failures = 0 if health.healthy else self._unhealthy.get(row.name, 0) + 1
        self._unhealthy[row.name] = failures
        status = row.status
        if failures >= UNHEALTHY_CHECKS:
            status = "UNAVAILABLE"
        elif health.healthy and row.status == "UNAVAILABLE":
            status = "AVAILABLE"
        detail: dict[str, Any] = {"components": dict(health.components), "detail": health.detail}
        scaling = self._scaling_status(row.name)
        if scaling is not None:
            detail["workers"] = scaling
        if status != row.status or detail != (row.detail or {}):
            if status != row.status:
                log.info("environment %s: %s -> %s %s", row.name, row.status, status, health.detail)
            self._store.update_environment(
                row.name,
                expect_generation=row.generation,
                status=status,
                detail=detail,
                webserver_url=self._backend.webserver_url(spec),
            )


def _as_failure(error: Exception) -> RuntimeFailure:
    if isinstance(error, RuntimeFailure):
        return error
    return RuntimeFailure("INTERNAL_ERROR", f"{type(error).__name__}: {error}")


def _failed(failure: RuntimeFailure, source: str) -> dict[str, Any]:
    return {
        "Status": "FAILED",
        "CreatedAt": datetime.now(UTC).timestamp(),
        "Source": source,
        "Error": {"ErrorCode": failure.code, "ErrorMessage": str(failure)[:1024] or failure.code},
    }
