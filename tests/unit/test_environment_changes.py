"""Requests against an environment that is changing answer at once with MWAA's error, and
GetEnvironment shows no log group that nothing writes to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import REQUEST, make_environments, make_store

from openmwaa.service.environments import Environments
from openmwaa.service.errors import ValidationException
from openmwaa.store.db import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = make_store(tmp_path)
    yield store
    store.close()


@pytest.fixture
def envs(store: Store) -> Environments:
    return make_environments(store)


def test_update_while_creating_or_updating_names_the_status(
    store: Store, envs: Environments
) -> None:
    envs.create("e", REQUEST)
    with pytest.raises(ValidationException, match="Environment e is CREATING and cannot be "):
        envs.update("e", {"MaxWorkers": 3})
    store.update_environment("e", status="AVAILABLE", applied=envs.row("e").spec)
    envs.update("e", {"MaxWorkers": 3})
    with pytest.raises(ValidationException, match="Environment e is UPDATING .* AVAILABLE"):
        envs.update("e", {"MaxWorkers": 4})
    assert envs.row("e").spec["MaxWorkers"] == 3


def test_delete_while_deleting_is_refused(store: Store, envs: Environments) -> None:
    envs.create("e", REQUEST)
    envs.delete("e")  # a create may be deleted
    generation = envs.row("e").generation
    with pytest.raises(ValidationException, match="Environment e is DELETING .* being deleted"):
        envs.delete("e")
    with pytest.raises(ValidationException, match="is DELETING"):
        envs.update("e", {"MaxWorkers": 3})
    assert envs.row("e").generation == generation  # nothing written


def test_logging_shows_no_invented_log_group(envs: Environments) -> None:
    envs.create(
        "e",
        {**REQUEST, "LoggingConfiguration": {"WorkerLogs": {"Enabled": True, "LogLevel": "ERROR"}}},
    )
    logging = envs.get("e")["LoggingConfiguration"]
    assert logging["WorkerLogs"] == {"Enabled": True, "LogLevel": "ERROR"}
    assert logging["TaskLogs"] == {"Enabled": True, "LogLevel": "INFO"}
    assert logging["SchedulerLogs"] == {"Enabled": False, "LogLevel": "INFO"}
    assert not any("CloudWatchLogGroupArn" in module for module in logging.values())
