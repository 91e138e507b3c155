"""A live ``openmwaa serve`` (local backend) with one real Airflow 3 environment.

The data dir links ``runtimes/`` to the run's one Airflow install
(``airflow_runtimes``); everything else (store, environments, ports) is this
suite's own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from endpoint_support import HELLO_DAG, REQUIRED, Server, client_for, wait_status
from live_server import belongs_under

from openmwaa.runtime.supervisor import terminate

ENV = "ep"


@pytest.fixture(scope="session")
def ep_data_dir(tmp_path_factory: pytest.TempPathFactory, airflow_runtimes: Path) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("endpoint")
    (path / "runtimes").symlink_to(airflow_runtimes)
    dags = path / "buckets" / "endpoint-dags" / "dags"
    dags.mkdir(parents=True)
    (dags / "hello.py").write_text(HELLO_DAG)
    yield path
    leftovers = [p for p in psutil.process_iter() if belongs_under(p, path)]
    terminate(leftovers, grace=5)


@pytest.fixture(scope="session")
def plane(ep_data_dir: Path) -> Iterator[Server]:
    srv = Server(ep_data_dir, ["--backend", "local"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def admin(plane: Server) -> Any:
    return plane.client()


@pytest.fixture(scope="session")
def environment(plane: Server, admin: Any) -> dict[str, Any]:
    """The one Airflow environment of this suite, AVAILABLE (Airflow installed if needed)."""
    started = time.monotonic()
    admin.create_environment(
        Name=ENV,
        **{**REQUIRED, "SourceBucketArn": "arn:aws:s3:::endpoint-dags"},
        EnvironmentClass="mw1.micro",
    )
    env = wait_status(admin, ENV, {"AVAILABLE", "CREATE_FAILED"}, timeout=900)
    assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
    print(f"environment {ENV} AVAILABLE in {time.monotonic() - started:.1f}s")
    return env


@pytest.fixture(autouse=True)
def _available(request: pytest.FixtureRequest) -> None:
    """Tests that use the environment start with it AVAILABLE: on this busy 2-core machine
    a slow health check may mark it UNAVAILABLE for a moment, and tokens need AVAILABLE."""
    if "environment" in request.fixturenames:
        wait_status(request.getfixturevalue("admin"), ENV, {"AVAILABLE"}, timeout=120)


@pytest.fixture(scope="session")
def early_tokens(admin: Any, environment: dict[str, Any]) -> dict[str, Any]:
    """Tokens minted as soon as the environment is up; the last tests use them after 60 s."""
    return {
        "cli": admin.create_cli_token(Name=ENV),
        "web": admin.create_web_login_token(Name=ENV),
        "at": time.monotonic(),
    }


@pytest.fixture(scope="session")
def endpoint(environment: dict[str, Any], early_tokens: dict[str, Any]) -> str:
    return "http://" + early_tokens["cli"]["WebServerHostname"]


@pytest.fixture(scope="session")
def viewer(plane: Server, environment: dict[str, Any]) -> Any:
    """A user whose policy maps to the Viewer role only."""
    role = f"arn:aws:airflow:us-east-1:123456789012:role/{ENV}/Viewer"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["airflow:InvokeRestApi", "airflow:CreateWebLoginToken"],
                "Resource": role,
            },
            {"Effect": "Allow", "Action": "airflow:GetEnvironment", "Resource": "*"},
        ],
    }
    done = plane.cli("keys", "create", "viewer", "--policy", json.dumps(policy))
    return client_for(plane, json.loads(done.stdout))
