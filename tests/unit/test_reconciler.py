"""The reconciler against a real store (SQLite) and an in-memory backend: stops in the
middle of work, failures of the health watch and of rollbacks, and progress that cannot be
written."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_support import REQUEST, FakeBackend, make_environments, make_store
from sqlalchemy.exc import OperationalError

from openmwaa.runtime.base import RuntimeFailure
from openmwaa.service.environments import Environments
from openmwaa.service.reconciler import Reconciler
from openmwaa.store.db import Store
from openmwaa.store.models import EnvironmentRow

BACKOFF = 0.3


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = make_store(tmp_path)
    yield store
    store.close()


@pytest.fixture
def envs(store: Store) -> Environments:
    return make_environments(store)


def reconciler(store: Store, envs: Environments, backend: FakeBackend, **kw: Any) -> Reconciler:
    options: dict[str, Any] = {"interval": 0.05, "start_timeout": 2.0, "retry_backoff": BACKOFF}
    return Reconciler(store, backend, envs, **{**options, **kw})


def one_pass(rec: Reconciler) -> None:
    """One tick, and wait for the steps it started."""
    rec.tick()
    for future in list(rec._busy.values()):
        future.result(timeout=10)


def row(store: Store, name: str = "e") -> EnvironmentRow:
    found = store.get_environment(name)
    assert found is not None
    return found


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def available(store: Store, envs: Environments, backend: FakeBackend) -> Reconciler:
    envs.create("e", REQUEST)
    rec = reconciler(store, envs, backend)
    one_pass(rec)
    assert row(store).status == "AVAILABLE"
    return rec


# -- stopping the server in the middle of work ---------------------------------------


@pytest.mark.parametrize(
    "abort", [None, RuntimeFailure("INSTALL_FAILED", "uv was killed")], ids=["interrupted", "any"]
)
def test_a_stop_during_create_leaves_it_to_the_next_start(
    store: Store, envs: Environments, abort: Exception | None
) -> None:
    """Stopping while CREATING (even when the aborted step fails with an error of its own)
    never makes the environment CREATE_FAILED nor destroys it; the next start creates it."""
    backend = FakeBackend()
    backend.block = True
    if abort is not None:
        backend.abort_error = abort
    envs.create("e", REQUEST)
    rec = reconciler(store, envs, backend)
    rec.start()
    assert backend.blocked.wait(5)
    started = time.monotonic()
    rec.stop()
    assert time.monotonic() - started < 3  # the step was aborted, not waited for
    assert row(store).status == "CREATING"
    assert row(store).last_update is None
    assert backend.count("destroy", "e") == 0

    again = FakeBackend()
    rec = reconciler(store, envs, again)
    rec.start()
    try:
        wait_for(lambda: row(store).status == "AVAILABLE")
    finally:
        rec.stop()
    assert again.count("provision", "e") == 1


def test_a_stop_during_update_neither_rolls_back_nor_fails(
    store: Store, envs: Environments
) -> None:
    backend = FakeBackend()
    rec = available(store, envs, backend)
    envs.update("e", {"MaxWorkers": 4})
    backend.block = True
    rec.start()
    assert backend.blocked.wait(5)
    rec.stop()
    env = row(store)
    assert (env.status, env.spec["MaxWorkers"]) == ("UPDATING", 4)
    assert env.applied is not None and env.applied["MaxWorkers"] == 10

    rec = reconciler(store, envs, FakeBackend())
    one_pass(rec)
    env = row(store)
    assert (env.status, env.applied) == ("AVAILABLE", env.spec)
    assert env.last_update is not None and env.last_update["Status"] == "SUCCESS"


# -- the health watch ------------------------------------------------------------------


def test_a_failing_watch_is_recorded_and_retried_with_backoff(
    store: Store, envs: Environments
) -> None:
    available(store, envs, FakeBackend())
    backend = FakeBackend()  # a restarted server: the watch starts the components
    backend.fail["start"] = [RuntimeFailure("PORT_IN_USE", "port 8080 is taken")] * 3
    rec = reconciler(store, envs, backend)

    one_pass(rec)
    env = row(store)
    assert env.status == "AVAILABLE"  # one failure is not an outage
    assert env.detail is not None and "port 8080 is taken" in env.detail["detail"]
    assert env.detail["failures"] == 1
    for _ in range(5):
        one_pass(rec)  # backing off: not tried again at once
    assert backend.count("start", "e") == 1

    time.sleep(BACKOFF)
    one_pass(rec)
    env = row(store)
    assert backend.count("start", "e") == 2
    assert env.status == "UNAVAILABLE"
    assert env.detail is not None and env.detail["failures"] == 2
    one_pass(rec)
    assert backend.count("start", "e") == 2  # the backoff survives the status change

    time.sleep(2 * BACKOFF)
    one_pass(rec)
    assert backend.count("start", "e") == 3
    time.sleep(4 * BACKOFF)
    one_pass(rec)
    env = row(store)
    assert env.status == "AVAILABLE"
    assert env.detail is not None and env.detail["components"] == {"scheduler": "healthy"}
    assert "failures" not in env.detail


# -- rollbacks -------------------------------------------------------------------------


def test_a_failed_rollback_is_retried_and_says_so(store: Store, envs: Environments) -> None:
    backend = FakeBackend()
    rec = available(store, envs, backend)
    rec = reconciler(store, envs, backend, rollback_attempts=2)
    envs.update("e", {"MaxWorkers": 4})
    backend.fail["apply"] = [
        RuntimeFailure("BAD_UPDATE", "the update broke"),
        *[RuntimeFailure("STILL_BROKEN", "the old one does not start")] * 3,
    ]

    one_pass(rec)
    env = row(store)
    assert env.status == "ROLLING_BACK"
    assert env.last_update is not None and env.last_update["Status"] == "FAILED"
    message = env.last_update["Error"]["ErrorMessage"]
    assert env.last_update["Error"]["ErrorCode"] == "BAD_UPDATE"
    assert message.startswith("the update broke Rolling back failed too (1 attempt")
    assert "the old one does not start" in message
    assert env.detail is not None and env.detail["rollback"]["failures"] == 1
    one_pass(rec)
    assert backend.count("apply", "e") == 2  # backing off

    time.sleep(BACKOFF)
    one_pass(rec)
    env = row(store)
    assert env.status == "UNAVAILABLE"  # it kept failing: the old configuration is not up
    assert env.last_update is not None
    assert "(2 attempts" in env.last_update["Error"]["ErrorMessage"]
    assert env.spec["MaxWorkers"] == 4  # still the failed one: the rollback is pending

    time.sleep(2 * BACKOFF)
    one_pass(rec)
    assert row(store).status == "UNAVAILABLE"  # third failure, still retried
    time.sleep(4 * BACKOFF)
    one_pass(rec)
    env = row(store)
    assert env.status == "UPDATE_FAILED"
    assert env.spec == env.applied and env.spec["MaxWorkers"] == 10
    assert env.last_update is not None
    assert env.last_update["Error"]["ErrorMessage"] == "the update broke"
    assert backend.count("apply", "e") == 5


# -- progress is best effort -------------------------------------------------------------


def test_progress_that_cannot_be_written_does_not_fail_the_create(
    store: Store, envs: Environments, monkeypatch: pytest.MonkeyPatch
) -> None:
    update = store.update_environment

    def locked(name: str, **values: Any) -> bool:
        if "progress" in (values.get("detail") or {}):
            raise OperationalError("UPDATE environments", {}, Exception("database is locked"))
        return update(name, **values)

    monkeypatch.setattr(store, "update_environment", locked)
    backend = FakeBackend()
    envs.create("e", REQUEST)
    one_pass(reconciler(store, envs, backend))
    assert row(store).status == "AVAILABLE"
    assert backend.count("destroy", "e") == 0
