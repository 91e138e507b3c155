"""A control plane killed with SIGKILL loses nothing it acknowledged, on SQLite and on
PostgreSQL: environments (tags, status, LastUpdate), keys, and work in progress."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import arn, cleanup, create_env, env_process, hold
from live_server import Server, drop_postgres_database, postgres_database, wait_status


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server of this test's own (never the shared one: it gets killed)."""
    url = postgres_database() if request.param == "postgresql" else None
    args = ["--backend", "test", *(["--database-url", url] if url else [])]
    server = Server(tmp_path / "data", args)
    server.start()
    try:
        yield server
    finally:
        try:
            if server.process is None:
                server.start()
            cleanup(server, server.client())
        finally:
            server.stop()
            if url:
                drop_postgres_database(url)


def test_everything_survives_sigkill(fresh_server: Server) -> None:
    server = fresh_server
    stem = f"p{uuid.uuid4().hex[:6]}"
    running, failed, creating = f"{stem}run", f"{stem}fail", f"{stem}new"
    client = server.client()
    admin = server.credentials()

    made: dict[str, Any] = {}

    def make_key() -> None:
        policy = {"Statement": {"Effect": "Allow", "Action": "airflow:Get*", "Resource": "*"}}
        done = server.cli("keys", "create", "survivor", "--policy", json.dumps(policy))
        made.update(json.loads(done.stdout))

    key_maker = threading.Thread(target=make_key)
    key_maker.start()  # a CLI run takes seconds: overlap it with the environments

    create_env(server, client, running, Tags={"team": "data"}, MaxWorkers=3)
    create_env(
        server, client, failed, AirflowConfigurationOptions={"core.test_fail_provision": "x"}
    )
    fifo = hold(server, creating)
    create_env(server, client, creating, Tags={"stage": "new"})
    wait_status(client, running, {"AVAILABLE"})
    client.update_environment(Name=running, MaxWorkers=4)
    client.tag_resource(ResourceArn=arn(running), Tags={"tier": "gold"})
    before = {
        running: wait_status(client, running, {"AVAILABLE"}),
        failed: wait_status(client, failed, {"CREATE_FAILED"}),
        creating: client.get_environment(Name=creating)["Environment"],
    }
    assert before[running]["LastUpdate"]["Status"] == "SUCCESS"
    assert before[creating]["Status"] == "CREATING"
    process = env_process(server, running)
    assert process is not None
    key_maker.join()
    survivor = server.client(key=made["AccessKeyId"], secret=made["SecretAccessKey"])
    assert survivor.get_environment(Name=running)["Environment"]["MaxWorkers"] == 4

    server.stop(signal.SIGKILL)
    fifo.unlink()  # nothing reads it any more: the reconciler thread died with the server
    assert process.is_running()  # environments outlive their control plane
    server.start()

    client = server.client()
    assert server.credentials() == admin
    after = client.get_environment(Name=running)["Environment"]
    assert after == before[running]
    assert after["Tags"] == {"team": "data", "tier": "gold"}
    assert (after["MaxWorkers"], after["LastUpdate"]["Status"]) == (4, "SUCCESS")
    after = client.get_environment(Name=failed)["Environment"]
    assert after == before[failed]
    assert after["LastUpdate"]["Error"]["ErrorCode"] == "TEST_FAILURE"

    after = wait_status(client, creating, {"AVAILABLE"})
    assert after["Tags"] == {"stage": "new"}
    assert after["CreatedAt"] == before[creating]["CreatedAt"]
    assert env_process(server, creating) is not None
    adopted = env_process(server, running)
    assert adopted is not None and adopted.pid == process.pid  # adopted, not restarted

    survivor = server.client(key=made["AccessKeyId"], secret=made["SecretAccessKey"])
    assert survivor.get_environment(Name=creating)["Environment"]["Status"] == "AVAILABLE"
    with pytest.raises(survivor.exceptions.AccessDeniedException):
        survivor.list_environments()  # its policy survived too
    pages = client.get_paginator("list_environments").paginate()
    names = [n for page in pages for n in page["Environments"]]
    assert names == sorted([running, failed, creating])
