"""The one table of environment statuses: which moves are legal, and that the store refuses
to write any other (a programming error) instead of recording it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from service_support import make_store

from openmwaa.store import status
from openmwaa.store.db import Store
from openmwaa.store.models import EnvironmentRow
from openmwaa.store.status import IllegalTransition, Status


def _row(name: str, state: str) -> EnvironmentRow:
    return EnvironmentRow(
        name=name,
        arn=f"arn:aws:airflow:us-east-1:123456789012:environment/{name}",
        status=state,
        created_at=datetime.now(UTC),
        spec={},
        applied=None,
        tags={},
        generation=1,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


def test_every_mwaa_status_is_known_and_has_its_moves() -> None:
    assert {s.value for s in Status} == {
        "CREATING", "CREATE_FAILED", "AVAILABLE", "UPDATING", "CREATING_SNAPSHOT",
        "ROLLING_BACK", "UPDATE_FAILED", "UNAVAILABLE", "DELETING", "DELETED", "PENDING",
        "MAINTENANCE",
    }  # fmt: skip
    assert set(status.TRANSITIONS) == set(Status)
    assert Status.AVAILABLE == "AVAILABLE" and "AVAILABLE" in status.SERVING


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        (None, "CREATING"),
        ("CREATING", "AVAILABLE"),
        ("CREATING", "CREATE_FAILED"),
        ("CREATING", "DELETING"),
        ("AVAILABLE", "UPDATING"),
        ("UPDATING", "ROLLING_BACK"),
        ("ROLLING_BACK", "UPDATE_FAILED"),
        ("ROLLING_BACK", "UNAVAILABLE"),
        ("UNAVAILABLE", "UPDATE_FAILED"),  # a rollback retried from UNAVAILABLE succeeded
        ("UNAVAILABLE", "AVAILABLE"),
        ("UPDATE_FAILED", "UPDATING"),
        ("CREATE_FAILED", "DELETING"),
        ("DELETING", "DELETED"),
        ("UPDATING", "UPDATING"),  # a new detail, same status
    ],
)
def test_legal_moves(current: str | None, wanted: str) -> None:
    assert status.allowed(current, wanted)
    status.check("e", current, wanted)


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        (None, "AVAILABLE"),
        ("CREATING", "UPDATING"),
        ("CREATING", "ROLLING_BACK"),
        ("CREATE_FAILED", "AVAILABLE"),
        ("DELETING", "AVAILABLE"),
        ("DELETING", "CREATE_FAILED"),
        ("DELETED", "CREATING"),
        ("AVAILABLE", "ROLLING_BACK"),
        ("AVAILABLE", "CREATE_FAILED"),
        ("AVAILABLE", "BOGUS"),
    ],
)
def test_illegal_moves(current: str | None, wanted: str) -> None:
    assert not status.allowed(current, wanted)
    with pytest.raises(IllegalTransition, match=re.escape(f"{current or '(new)'} -> {wanted}")):
        status.check("e", current, wanted)


def test_named_sets_agree() -> None:
    assert status.SERVING <= status.REST_API <= status.ENDPOINT_LISTENS
    assert status.SCALED <= status.JOINABLE
    assert Status.UPDATE_FAILED in status.JOINABLE  # it serves on the old configuration
    assert not status.UPDATABLE & status.CHANGING
    assert Status.DELETING not in status.DELETABLE
    for s in status.UPDATABLE:
        assert status.allowed(s, Status.UPDATING)
    for s in status.DELETABLE:
        assert status.allowed(s, Status.DELETING)


def test_the_store_writes_legal_moves(store: Store) -> None:
    assert store.insert_environment(_row("e", Status.CREATING))
    assert store.update_environment("e", expect_generation=1, status=Status.AVAILABLE)
    assert store.update_environment("e", status="UPDATING", generation=2)
    assert store.update_environment("e", detail={"progress": "x"})  # no status: no check
    row = store.get_environment("e")
    assert row is not None and row.status == "UPDATING" and row.generation == 2
    assert store.update_environment("e", status="DELETING")
    store.delete_environment("e")
    assert store.get_environment("e") is None


def test_the_store_refuses_illegal_moves_and_writes_nothing(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(IllegalTransition):
        store.insert_environment(_row("e", "AVAILABLE"))
    assert store.get_environment("e") is None
    assert store.insert_environment(_row("e", "CREATING"))
    with pytest.raises(IllegalTransition, match="CREATING -> ROLLING_BACK"):
        store.update_environment("e", status="ROLLING_BACK", detail={"x": 1})
    assert "illegal status transition CREATING -> ROLLING_BACK" in caplog.text
    with pytest.raises(IllegalTransition, match="CREATING -> DELETED"):
        store.delete_environment("e")
    row = store.get_environment("e")
    assert row is not None and row.status == "CREATING" and row.detail is None


def test_a_stale_generation_is_no_error(store: Store) -> None:
    """A compare-and-set that lost to a newer request returns False, whatever it wanted:
    (a create that ends while the user deletes it is not a bug)."""
    assert store.insert_environment(_row("e", "CREATING"))
    assert store.update_environment("e", status="DELETING", generation=2)
    assert not store.update_environment("e", expect_generation=1, status="AVAILABLE")
    assert not store.update_environment("gone", status="AVAILABLE")
    row = store.get_environment("e")
    assert row is not None and row.status == "DELETING"
