"""A backend for the control plane's own tests: one real, idle process per environment.

It lets the API, the store and the reconciler be tested in seconds without an
Airflow install, and it never claims more than it has: an environment is
healthy exactly while its process is alive, so killing that process makes the
environment UNAVAILABLE as a dead Airflow would. Like the local backend, it
adopts processes a killed control plane left behind and stops its processes
when the control plane stops cleanly. Selected by ``--backend test``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from openmwaa.runtime.base import (
    AirflowCli,
    EnvironmentSpec,
    Health,
    Progress,
    RuntimeFailure,
    WorkerBundle,
    WorkerLoad,
)
from openmwaa.runtime.installs import SUPPORTED_VERSIONS

_MARKER = "openmwaa-test-environment"


class ProcessBackend:
    def __init__(self, data_dir: Path, versions: list[str] | None = None) -> None:
        self._root = data_dir / "environments"
        self._versions = versions or list(SUPPORTED_VERSIONS)
        self._started: dict[str, EnvironmentSpec] = {}

    def _dir(self, spec: EnvironmentSpec) -> Path:
        return self._root / spec.name

    def _process(self, spec: EnvironmentSpec) -> psutil.Process | None:
        pid_file = self._dir(spec) / "process.pid"
        try:
            process = psutil.Process(int(pid_file.read_text()))
            if _MARKER in process.cmdline() and process.status() != psutil.STATUS_ZOMBIE:
                return process
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def supported_versions(self) -> list[str]:
        return list(self._versions)

    def provision(self, spec: EnvironmentSpec, progress: Progress) -> None:
        if spec.airflow_configuration_options.get("core.test_fail_provision"):
            raise RuntimeFailure("TEST_FAILURE", "provision failed as the test asked")
        progress("preparing the environment folder")
        self._dir(spec).mkdir(parents=True, exist_ok=True)

    def start(self, spec: EnvironmentSpec, progress: Progress) -> None:
        self._started[spec.name] = spec
        if self._process(spec) is not None:
            return
        progress("starting the environment's process")
        self._dir(spec).mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-c", "import time\nwhile True: time.sleep(60)", _MARKER],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (self._dir(spec) / "process.pid").write_text(str(process.pid))

    def apply(self, old: EnvironmentSpec, new: EnvironmentSpec, progress: Progress) -> None:
        if new.airflow_configuration_options.get("core.test_fail_update"):
            raise RuntimeFailure("TEST_FAILURE", "update failed as the test asked")
        self.stop(old)
        self.start(new, progress)

    def worker_load(self, spec: EnvironmentSpec) -> WorkerLoad | None:
        return None  # no executor, so nothing to scale

    def set_workers(self, spec: EnvironmentSpec, count: int) -> None:
        raise RuntimeFailure("NO_WORKERS", "the test backend runs no workers")

    def worker_bundle(self, spec: EnvironmentSpec) -> WorkerBundle | None:
        return None

    def health(self, spec: EnvironmentSpec) -> Health:
        if self._process(spec) is None:
            return Health(False, "the environment's process is not running", {"process": "down"})
        return Health(True, "", {"process": "healthy"})

    def webserver_url(self, spec: EnvironmentSpec) -> str | None:
        return None

    def airflow_api(
        self, spec: EnvironmentSpec, role: str, *, fresh: bool = False
    ) -> tuple[str, str]:
        raise RuntimeFailure("NO_AIRFLOW", "the test backend runs no Airflow")

    def airflow_cli(self, spec: EnvironmentSpec) -> AirflowCli:
        raise RuntimeFailure("NO_AIRFLOW_CLI", "the test backend runs no Airflow CLI")

    def isolation_problems(self) -> list[str]:
        """Its placeholder processes run as the server: said when that is not root."""
        from openmwaa.runtime.tenancy.users import isolation_problem

        return [p for p in [isolation_problem()] if p]

    def stop(self, spec: EnvironmentSpec) -> None:
        process = self._process(spec)
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except psutil.TimeoutExpired:
                process.kill()

    def destroy(self, spec: EnvironmentSpec, progress: Progress) -> None:
        self._started.pop(spec.name, None)
        self.stop(spec)
        shutil.rmtree(self._dir(spec), ignore_errors=True)

    def shutdown(self) -> None:
        for spec in list(self._started.values()):
            self.stop(spec)
