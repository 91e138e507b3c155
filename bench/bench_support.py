"""Setup shared by the benchmarks: a data dir reusing an Airflow install, hand-started Airflow.

Imported by the scripts of bench/ (their folder is on ``sys.path`` when run as
``.venv/bin/python bench/<script>.py``), after they put tests/ on ``sys.path``.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import psutil
from live_server import installs_root

from openmwaa.settings import default_data_dir


def shared_runtimes() -> Path:
    """The runtimes folder to reuse: ``make install``'s (``~/.openmwaa``) when present, else
    the runtime tests' when present, else ``~/.openmwaa``'s (to build the install there)."""
    shared = default_data_dir() / "runtimes"
    if not shared.is_dir() and (installs_root() / "runtimes").is_dir():
        shared = installs_root() / "runtimes"
    return shared


def bench_data_dir(prefix: str, runtimes: Path, bucket: str) -> tuple[Path, Path]:
    """A fresh temporary data dir sharing ``runtimes`` (when it exists) and the DAG folder
    of its ``bucket``, made: (data dir, DAG folder)."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    if runtimes.is_dir():
        (data_dir / "runtimes").symlink_to(runtimes)
    dags = data_dir / "buckets" / bucket / "dags"
    dags.mkdir(parents=True)
    return data_dir, dags


def start_component(argv: list[str], env: dict[str, str], home: Path, name: str) -> psutil.Process:
    """An Airflow component started by hand in ``home``, in a session of its own (to stop
    it with its children), its output in ``home/<name>.log``."""
    with (home / f"{name}.log").open("wb") as log:
        child = subprocess.Popen(
            argv,
            env=env,
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return psutil.Process(child.pid)
