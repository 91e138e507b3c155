"""Shared fixtures: one Airflow install and one running environment per test run.

Installs live under /tmp keyed by the constraints files, so a rerun reuses the
built install (and uv's cache) instead of installing Airflow again; each run has
a data dir of its own that links to them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from live_server import belongs_under
from runtime_support import PIPELINE_DAG, Api, assert_healthy, make_spec

from openmwaa.runtime.base import EnvironmentSpec
from openmwaa.runtime.installs import DEFAULT_VERSION, ensure_install
from openmwaa.runtime.local import LocalBackend
from openmwaa.runtime.supervisor import terminate


@pytest.fixture(scope="session")
def data_dir(airflow_runtimes: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data dir of this test run's own, sharing the machine's Airflow installs.

    Its own, so that two runs of runtime tests at once (several developers on one host)
    never stop or delete each other's environments; ``runtimes`` is the shared folder,
    so installs are built once per machine (their build locks live there too).
    """
    path = tmp_path_factory.mktemp("runtime-data")
    (path / "runtimes").symlink_to(airflow_runtimes, target_is_directory=True)
    (path / "buckets" / "tests" / "dags").mkdir(parents=True)
    yield path
    leftovers = [p for p in psutil.process_iter() if belongs_under(p, path)]
    terminate(leftovers, grace=5)


@pytest.fixture(scope="session")
def install(data_dir: Path) -> Path:
    return ensure_install(data_dir, DEFAULT_VERSION, None, print)


@pytest.fixture(scope="session")
def backend(data_dir: Path, install: Path) -> Iterator[LocalBackend]:
    b = LocalBackend(data_dir)
    yield b
    b.shutdown()


@pytest.fixture(scope="session")
def bucket(data_dir: Path) -> Path:
    return data_dir / "buckets" / "tests"


@pytest.fixture(scope="session")
def running(backend: LocalBackend, bucket: Path) -> tuple[EnvironmentSpec, Api]:
    """One environment shared by the tests that only need a running Airflow."""
    (bucket / "dags" / "pipeline.py").write_text(PIPELINE_DAG)
    (bucket / "startup").mkdir(exist_ok=True)
    (bucket / "startup" / "ok.sh").write_text(
        'echo "startup for $MWAA_AIRFLOW_COMPONENT"\n'
        'export OPENMWAA_TEST_COMPONENT="$MWAA_AIRFLOW_COMPONENT"\n'
        "export AIRFLOW__CORE__EXECUTOR=SequentialExecutor\n"
    )
    spec = make_spec("main", startup_script_s3_path="startup/ok.sh")
    started = time.monotonic()
    backend.provision(spec, print)
    backend.start(spec, print)
    print(f"environment main healthy in {time.monotonic() - started:.1f}s")
    assert_healthy(backend, spec)
    return spec, Api(backend, spec)
