"""Control-plane restarts and stops in the middle of work, with real Airflow.

A restarted control plane never replaces an environment's secrets behind the user's
back, runs the DAG mirror again after an update it resumed, and a stopping one makes
a step in flight give up (Interrupted, to be resumed) within the 30 s it has.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from live_server import wait_for
from runtime_support import assert_healthy, make_spec, simple_dag

from openmwaa.runtime.base import Interrupted, RuntimeFailure
from openmwaa.runtime.local import LocalBackend, state
from openmwaa.runtime.supervisor import marked_processes


def _full_disk(line: str) -> None:
    raise OSError(28, "No space left on device", "progress.db")


def test_restart_keeps_secrets_and_runs_the_mirror_again(
    data_dir: Path, bucket: Path, install: Path
) -> None:
    (bucket / "keeper").mkdir(exist_ok=True)
    (bucket / "keeper" / "first.py").write_text(simple_dag("first"))
    spec = make_spec("keeper", dag_s3_path="keeper")
    first = LocalBackend(data_dir)
    second = LocalBackend(data_dir)
    try:
        # Progress lines are best effort: a store that cannot record them fails nothing.
        first.provision(spec, _full_disk)
        first.start(spec, _full_disk)
        layout = first.layout(spec.name)
        raw = layout.secrets.read_bytes()
        layout.secrets.write_bytes(raw[: len(raw) // 2])  # e.g. a disk that filled up
        first.shutdown()

        with pytest.raises(RuntimeFailure) as failure:
            second.start(spec, print)  # the restarted control plane
        assert failure.value.code == state.UNREADABLE
        assert str(layout.secrets) in str(failure.value)
        assert layout.secrets.read_bytes() == raw[: len(raw) // 2], "secrets were replaced"
        assert second.supervisor.components(spec.name) == {}

        layout.secrets.write_bytes(raw)  # restored from a backup
        # The control plane stopped during an update; the new one resumes it.
        updated = dataclasses.replace(
            spec, airflow_configuration_options={"core.default_task_retries": "1"}
        )
        second.apply(spec, updated, print)
        assert_healthy(second, updated)
        assert layout.secrets.read_bytes() == raw
        (bucket / "keeper" / "second.py").write_text(simple_dag("second"))
        wait_for(lambda: (layout.dags / "second.py").exists(), 15, "the mirror to run again")
    finally:
        second.destroy(spec, print)
        second.shutdown()
        first.shutdown()


def test_shutdown_interrupts_a_start_within_30s(
    data_dir: Path, bucket: Path, install: Path
) -> None:
    (bucket / "keeper").mkdir(exist_ok=True)
    spec = make_spec("interrupted", dag_s3_path="keeper")
    backend = LocalBackend(data_dir)
    waiting = threading.Event()
    outcome: list[BaseException | None] = []

    def progress(line: str) -> None:
        if line.startswith("waiting for Airflow"):
            waiting.set()

    def start() -> None:
        try:
            backend.start(spec, progress)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    layout = backend.layout(spec.name)
    try:
        backend.provision(spec, print)
        worker = threading.Thread(target=start)
        worker.start()
        assert waiting.wait(180), "the start did not reach its wait"
        started = time.monotonic()
        backend.shutdown()
        assert time.monotonic() - started < 30
        worker.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], Interrupted), outcome
        assert marked_processes(layout.root) == []
    finally:
        cleaner = LocalBackend(data_dir)
        cleaner.destroy(spec, print)
        cleaner.shutdown()
