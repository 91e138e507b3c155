"""The one owner of every environment's lifecycle.

API calls write the wanted state; this loop reads the store and moves each
environment with the backend, one worker per environment at a time. Every
step ends in a compare-and-set on the environment's generation, so a newer
request (a delete during a create) is never overwritten, and after a restart
of the control plane the loop simply finds each environment where it was.

A step that fails for a reason of its own is retried with a backoff per
environment; a step abandoned because the control plane stops (``Interrupted``,
or any failure once stopping began) leaves the status as it was, so the next
start resumes it: a stop never makes an environment CREATE_FAILED.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from openmwaa.core.loops import PeriodicLoop
from openmwaa.runtime.base import Backend, EnvironmentSpec, Interrupted, RuntimeFailure
from openmwaa.service import retries
from openmwaa.service.environments import Environments
from openmwaa.service.retries import Retries, RetryLater
from openmwaa.store.db import Store
from openmwaa.store.models import EnvironmentRow
from openmwaa.store.status import WATCHED, Status

log = logging.getLogger(__name__)

UNHEALTHY_CHECKS = 2
"""Consecutive failed health checks before an environment is UNAVAILABLE: one slow
answer on a loaded host is not an outage."""
ROLLBACK_ATTEMPTS = 3
"""Failed rollbacks while ROLLING_BACK; then the environment is UNAVAILABLE (and the
rollback is still retried, with a longer backoff)."""


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
        retry_backoff: float = 5.0,
        max_backoff: float = 300.0,
        rollback_attempts: int = ROLLBACK_ATTEMPTS,
    ) -> None:
        self._store = store
        self._backend = backend
        self._environments = environments
        self._start_timeout = start_timeout
        self._scaling_status = scaling_status or (lambda _name: None)
        self._rollback_attempts = rollback_attempts
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="reconcile")
        self._busy: dict[str, Future[None]] = {}
        self._unhealthy: dict[str, int] = {}
        self._retries = Retries(retry_backoff, max_backoff)
        """Environments whose last step failed: when they may be tried again."""
        self._started: set[str] = set()
        """Environments whose processes this control plane has (re)started since it began."""
        self._loop = PeriodicLoop("reconciler", self.tick, interval)

    def start(self) -> None:
        self._loop.start()

    def wake(self) -> None:
        self._loop.wake()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the loop, abort the steps in flight and stop every environment.

        The backend's shutdown comes first: it makes steps in flight (a uv install) end
        with Interrupted instead of being waited for. Steps then leave their status as it
        was, and the next start resumes them. A step still running after ``timeout`` is
        logged and left behind.
        """
        self._stopping.set()
        self._loop.stop(timeout=10)
        in_flight = [f for f in self._busy.values() if not f.done()]
        self._backend.shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)
        _done, late = wait(in_flight, timeout=timeout)
        if late:
            log.warning("%d environment step(s) still running after %.0f s", len(late), timeout)
        if in_flight:  # a step may have started something after the shutdown began
            self._backend.shutdown()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the loop -------------------------------------------------------------

    def tick(self) -> None:
        """One pass: hand every environment that needs work (and is not backing off) to a
        worker."""
        now = time.monotonic()
        present = set()
        for row in self._store.environments():
            present.add(row.name)
            future = self._busy.get(row.name)
            if future is not None and not future.done():
                continue
            if not self._retries.due(row, now):
                continue
            step = self._step_for(row)
            if step is not None and not self._stopping.is_set():
                self._busy[row.name] = self._pool.submit(self._run, step, row)
        for name in [n for n, f in self._busy.items() if f.done()]:
            del self._busy[name]
        self._retries.keep_only(present)

    def _step_for(self, row: EnvironmentRow) -> Callable[[EnvironmentRow], None] | None:
        if row.status == Status.UNAVAILABLE and _rollback_pending(row):
            return self._roll_back  # a rollback that kept failing: still retried
        if row.status in WATCHED:
            return self._watch
        steps: dict[str, Callable[[EnvironmentRow], None]] = {
            Status.CREATING: self._create,
            Status.UPDATING: self._update,
            Status.ROLLING_BACK: self._roll_back,
            Status.DELETING: self._delete,
        }
        return steps.get(row.status)

    def _run(self, step: Callable[[EnvironmentRow], None], row: EnvironmentRow) -> None:
        if self._stopping.is_set():
            return
        try:
            step(row)
        except Exception as e:
            if isinstance(e, Interrupted) or self._stopping.is_set():
                log.info(
                    "environment %s: %s step abandoned as the server stops; it resumes at "
                    "the next start (%s)",
                    row.name,
                    row.status,
                    e,
                )
                return
            if isinstance(e, RetryLater):
                return  # the step recorded its failure and scheduled the retry
            failures, delay = self._retries.failed(row)
            log.exception(
                "environment %s: %s step failed (attempt %d, retrying in %.0f s)",
                row.name,
                row.status,
                failures,
                delay,
            )
            self._record_failure(row, e, failures, delay)
            return
        self._retries.succeeded(row.name)

    def _record_failure(
        self, row: EnvironmentRow, error: Exception, failures: int, delay: float
    ) -> None:
        """Show a failed step in the status detail; a watched environment whose watch keeps
        failing (its processes cannot be started) is UNAVAILABLE."""
        message = f"{retries.as_failure(error)}"
        values: dict[str, Any] = {
            "detail": {
                "detail": f"{message} (attempt {failures}; retrying in {delay:.0f} s)",
                "error": message,
                "failures": failures,
                "retry_in_seconds": round(delay, 1),
            }
        }
        if row.status in WATCHED:
            self._unhealthy[row.name] = self._unhealthy.get(row.name, 0) + 1
            if self._unhealthy[row.name] >= UNHEALTHY_CHECKS:
                values["status"] = Status.UNAVAILABLE
        if self._write(row, **values) and "status" in values:
            self._retries.moved(row.name, values["status"])

    def _write(self, row: EnvironmentRow, **values: Any) -> bool:
        """A best-effort write for the current generation: logged, never raised."""
        try:
            return self._store.update_environment(
                row.name, expect_generation=row.generation, **values
            )
        except Exception:
            log.exception("environment %s: could not record %s", row.name, sorted(values))
            return False

    # -- steps ----------------------------------------------------------------

    def _progress(self, row: EnvironmentRow) -> Callable[[str], None]:
        def report(line: str) -> None:
            log.info("environment %s: %s", row.name, line)
            try:
                self._store.update_environment(row.name, detail={"progress": line})
            except Exception as e:  # a full disk or a locked SQLite must not end the step
                log.warning("environment %s: progress not recorded: %s", row.name, e)

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
            if self._stopping.is_set():
                raise Interrupted("the control plane is stopping")
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    "START_TIMEOUT",
                    f"Airflow did not become healthy in {self._start_timeout:.0f} s: "
                    f"{health.detail or 'no detail'}",
                )
            time.sleep(0.25)

    def _abandoned(self, error: Exception) -> bool:
        """Whether a failure is the server stopping rather than the step's own."""
        return isinstance(error, Interrupted) or self._stopping.is_set()

    def _create(self, row: EnvironmentRow) -> None:
        spec = self._environments.spec_of(row.name, row.spec)
        try:
            self._bring_up(spec, row, provision=True)
        except Exception as e:
            if self._abandoned(e):
                raise  # stays CREATING: the next start resumes the create
            failure = retries.as_failure(e)
            log.warning("environment %s: create failed: %s", row.name, failure)
            self._backend.destroy(spec, self._progress(row))
            self._started.discard(row.name)
            self._store.update_environment(
                row.name,
                expect_generation=row.generation,
                status=Status.CREATE_FAILED,
                last_update=retries.failed(failure, "CreateEnvironment"),
                detail=None,
            )
            return
        self._settle(row, Status.AVAILABLE, spec, applied=row.spec)

    def _update(self, row: EnvironmentRow) -> None:
        assert row.applied is not None
        old = self._environments.spec_of(row.name, row.applied)
        new = self._environments.spec_of(row.name, row.spec)
        try:
            self._backend.apply(old, new, self._progress(row))
            self._started.add(row.name)
            self._wait_healthy(new)
        except Exception as e:
            if self._abandoned(e):
                raise  # stays UPDATING: the next start applies the update again
            failure = retries.as_failure(e)
            log.warning("environment %s: update failed, rolling back: %s", row.name, failure)
            last = {**(row.last_update or {}), **retries.failed(failure, "UpdateEnvironment")}
            if self._store.update_environment(
                row.name,
                expect_generation=row.generation,
                status=Status.ROLLING_BACK,
                last_update=last,
            ):
                row.status, row.last_update = Status.ROLLING_BACK, last
                self._roll_back(row)
            return
        last_update = {**(row.last_update or {}), "Status": "SUCCESS"}
        self._settle(row, Status.AVAILABLE, new, applied=row.spec, last_update=last_update)

    def _roll_back(self, row: EnvironmentRow) -> None:
        """Return to the configuration that ran before the failed update.

        A failed rollback is retried with backoff: ROLLING_BACK for the first
        ``rollback_attempts``, then UNAVAILABLE (the old configuration does not run),
        each time saying so in LastUpdate.Error and the status detail. The stored
        configuration stays the failed one until the rollback succeeds, which is how an
        UNAVAILABLE environment with a rollback still to do is told apart.
        """
        assert row.applied is not None
        failed = self._environments.spec_of(row.name, row.spec)
        old = self._environments.spec_of(row.name, row.applied)
        try:
            self._backend.apply(failed, old, self._progress(row))
            self._started.add(row.name)
            self._wait_healthy(old)
        except Exception as e:
            if self._abandoned(e):
                raise  # stays ROLLING_BACK: the next start rolls back again
            self._rollback_failed(row, retries.as_failure(e))
            raise RetryLater() from e
        last = retries.rolled_back(row.last_update)
        self._settle(row, Status.UPDATE_FAILED, old, spec=row.applied, last_update=last)

    def _rollback_failed(self, row: EnvironmentRow, failure: RuntimeFailure) -> None:
        status = Status(row.status)
        failures, delay = self._retries.failed(row)
        if status == Status.ROLLING_BACK and failures >= self._rollback_attempts:
            # Give up waiting, not trying: the retries go on, with a longer backoff.
            status = Status.UNAVAILABLE
            self._retries.moved(row.name, status)
        log.error(
            "environment %s: rollback failed (attempt %d; %s, retrying in %.0f s): %s",
            row.name,
            failures,
            status,
            delay,
            failure,
        )
        self._write(
            row,
            status=status,
            last_update=retries.rollback_failed(row.last_update, failure, failures, delay),
            detail={
                "detail": f"rollback failed (attempt {failures}; retrying in {delay:.0f} s): "
                f"{failure}",
                "rollback": {
                    "failures": failures,
                    "error": f"{failure.code}: {failure}",
                    "retry_in_seconds": round(delay, 1),
                },
            },
        )

    def _settle(
        self, row: EnvironmentRow, status: Status, running: EnvironmentSpec, **values: Any
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
        if self._stopping.is_set():
            raise Interrupted("the control plane is stopping")  # its processes are stopping
        failures = 0 if health.healthy else self._unhealthy.get(row.name, 0) + 1
        self._unhealthy[row.name] = failures
        status = Status(row.status)
        if failures >= UNHEALTHY_CHECKS:
            status = Status.UNAVAILABLE
        elif health.healthy and row.status == Status.UNAVAILABLE:
            status = Status.AVAILABLE
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


def _rollback_pending(row: EnvironmentRow) -> bool:
    """An update failed and the configuration before it is not running again yet."""
    return row.applied is not None and row.spec != row.applied
