"""A real Store on SQLite, the domain over it, and a small in-memory Backend, for tests of
the service layer below the API (reconciler, worker hosts, status checks)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from openmwaa.runtime.base import (
    AirflowCli,
    EnvironmentSpec,
    Health,
    Interrupted,
    Progress,
    RuntimeFailure,
    WorkerBundle,
    WorkerLoad,
)
from openmwaa.service.environments import Environments
from openmwaa.store.db import Store

VERSION = "3.3.2"
BLOCK_LIMIT = 5.0
"""A blocked step fails after this long, so a broken shutdown fails a test, not hangs it."""
REQUEST: dict[str, Any] = {
    "SourceBucketArn": "arn:aws:s3:::bucket",
    "DagS3Path": "dags",
    "ExecutionRoleArn": "arn:aws:iam::123456789012:role/r",
    "NetworkConfiguration": {"SubnetIds": ["subnet-1", "subnet-2"]},
}


def make_store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    return store


def make_environments(store: Store) -> Environments:
    return Environments(
        store,
        region="us-east-1",
        account_id="123456789012",
        supported_versions=[VERSION],
        refused_config_keys=lambda _options: [],
    )


class FakeBackend:
    """The Backend protocol in memory. Each ``fail_*`` is a list of exceptions raised by the
    next calls of that method, in order (empty: the call succeeds); ``block`` makes
    ``provision`` and ``apply`` wait until ``release`` is set or ``shutdown`` interrupts them,
    as the local backend's shutdown aborts a step in flight."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.running: set[str] = set()
        self.fail: dict[str, list[Exception]] = {}
        self.healthy = True
        self.block = False
        self.blocked = threading.Event()
        self.release = threading.Event()
        self._stopping = threading.Event()
        self.abort_error: Exception = Interrupted("the control plane is stopping")
        """What a blocked step raises once ``shutdown`` is called."""

    def _call(self, method: str, spec: EnvironmentSpec) -> None:
        self.calls.append((method, spec.name))
        failures = self.fail.get(method)
        if failures:
            raise failures.pop(0)

    def _maybe_block(self) -> None:
        if not self.block:
            return
        self.blocked.set()
        deadline = time.monotonic() + BLOCK_LIMIT
        while not self.release.wait(0.05):
            if self._stopping.is_set():
                raise self.abort_error
            if time.monotonic() > deadline:  # never hang a test: fail the step instead
                raise RuntimeFailure("TEST_TIMEOUT", "nothing released the step")

    def count(self, method: str, name: str) -> int:
        return self.calls.count((method, name))

    def supported_versions(self) -> list[str]:
        return [VERSION]

    def provision(self, spec: EnvironmentSpec, progress: Progress) -> None:
        progress("provisioning")
        self._maybe_block()
        self._call("provision", spec)

    def start(self, spec: EnvironmentSpec, progress: Progress) -> None:
        self._call("start", spec)
        self.running.add(spec.name)

    def apply(self, old: EnvironmentSpec, new: EnvironmentSpec, progress: Progress) -> None:
        progress("applying")
        self._maybe_block()
        self._call("apply", new)
        self.running.add(new.name)

    def health(self, spec: EnvironmentSpec) -> Health:
        self._call("health", spec)
        if self.healthy and spec.name in self.running:
            return Health(True, components={"scheduler": "healthy"})
        return Health(False, "scheduler is down", {"scheduler": "down"})

    def webserver_url(self, spec: EnvironmentSpec) -> str | None:
        return "http://127.0.0.1:1" if spec.name in self.running else None

    def airflow_api(
        self, spec: EnvironmentSpec, role: str, *, fresh: bool = False
    ) -> tuple[str, str]:
        raise RuntimeFailure("NOT_RUNNING", "no Airflow here")

    def airflow_cli(self, spec: EnvironmentSpec) -> AirflowCli:
        raise RuntimeFailure("NOT_RUNNING", "no Airflow here")

    def isolation_problems(self) -> list[str]:
        return []

    def worker_load(self, spec: EnvironmentSpec) -> WorkerLoad | None:
        return None

    def set_workers(self, spec: EnvironmentSpec, count: int) -> None:
        pass

    def worker_bundle(self, spec: EnvironmentSpec) -> WorkerBundle | None:
        return WorkerBundle(
            airflow_version=spec.airflow_version,
            requirements=None,
            env={},
            queue=spec.celery_queue,
            concurrency=spec.tasks_per_worker,
            startup_script=None,
            fingerprint="f1",
            folders={},
        )

    def destroy(self, spec: EnvironmentSpec, progress: Progress) -> None:
        self._call("destroy", spec)
        self.running.discard(spec.name)

    def shutdown(self) -> None:
        self._stopping.set()
