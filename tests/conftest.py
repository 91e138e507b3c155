"""Shared fixtures: one control plane for the API tests, one Airflow install per run; and
the markers that let a developer run the fast part (``make test-fast``)."""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import Server, installs_root

AIRFLOW_FOLDERS = {"e2e", "endpoint", "runtime", "scale"}
"""Test folders whose tests start real Airflow processes."""
SERVICES_FOLDERS = {"scale"}
"""Test folders whose tests need PostgreSQL, Redis or RabbitMQ (elsewhere: by test name)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder or fixture (``airflow``, ``services``), PostgreSQL ones by name."""
    for item in items:
        folder = item.path.parent.name
        if folder in AIRFLOW_FOLDERS or "airflow_runtimes" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.airflow)
        if folder in SERVICES_FOLDERS or "postgres" in item.nodeid.lower():
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session", autouse=True)
def remove_test_tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the run (after every server it started has stopped), the OS users of
    the environments those servers made and their folders in the tenant base: those whose
    data dir is under this run's temporary folder, and nothing else (users.users_of and
    placement.placements_of match whole folders; remove_user_named keeps any user that
    openmwaa did not make)."""
    yield
    if os.geteuid() != 0:
        return
    from openmwaa.runtime.tenancy import placement, users
    from openmwaa.runtime.tenancy.cgroups import Cgroups

    basetemp = tmp_path_factory.getbasetemp().resolve()
    if len(basetemp.parts) < 3:  # never / nor /tmp itself
        return
    for name in users.users_of(str(basetemp)):
        try:
            users.remove_user_named(name)
        except users.UserError as e:
            warnings.warn(f"test user left behind: {e}", stacklevel=1)
    for folder in placement.placements_of(str(basetemp)):
        cgroups = Cgroups(folder.name)  # named, as the folder, after the server's data dir
        if cgroups.available:
            for env in cgroups.environments():
                cgroups.remove(env)
            cgroups.remove_instance()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_runtimes() -> Path:
    """One Airflow install per test run, shared by every backend and server the tests start."""
    from openmwaa.runtime.installs import DEFAULT_VERSION, ensure_install

    root = installs_root()
    ensure_install(root, DEFAULT_VERSION, None, print)
    return root / "runtimes"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A control plane on SQLite with the test backend, shared by the API tests."""
    srv = Server(tmp_path_factory.mktemp("control-plane"), ["--backend", "test"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def mwaa(server: Server) -> Any:
    return server.client()


@pytest.fixture
def env_name(request: pytest.FixtureRequest) -> str:
    """A unique, valid environment name per test."""
    return f"t{uuid.uuid4().hex[:8]}"
