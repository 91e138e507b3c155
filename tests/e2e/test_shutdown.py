"""Stopping the server in the middle of an install: it exits within 30 s, the environment
stays CREATING (never CREATE_FAILED because of the stop), and the next start resumes it.

Needs every part of the stop path: the server's stop order and hard deadline (server.py),
cancelled installs (runtime/installs.py), interrupted steps (LocalBackend.shutdown) and a
reconciler that leaves CREATING/UPDATING to the next start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from live_server import NETWORK, Server, wait_for, wait_status
from runtime_support import simple_dag

NAME = "interrupted"
BUCKET = "shutdown-dags"
STOP_WITHIN = 30.0

SLOW_BACKEND = """
import pathlib, time

pathlib.Path({started!r}).write_text("building")
time.sleep(600)  # a requirement that takes minutes to build


def get_requires_for_build_wheel(config_settings=None):
    return []
"""


def _slow_package(root: Path, started: Path) -> Path:
    """A local package whose build backend sleeps 10 minutes (no index needed: it requires
    nothing, and with no static metadata uv must run the backend)."""
    package = root / "slowpkg"
    package.mkdir()
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "slow_backend"\nbackend-path = ["."]\n'
    )
    (package / "slow_backend.py").write_text(SLOW_BACKEND.format(started=str(started)))
    return package


def _status_in_store(server: Server) -> dict[str, Any]:
    rows = json.loads(server.cli("status", "--json").stdout)
    return next(row for row in rows if row["Name"] == NAME)


def _builds(package: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        text = " ".join(proc.info["cmdline"] or []) + " " + str(proc.info["cwd"] or "")
        if str(package) in text:
            found.append(proc)
    return found


def test_stop_during_an_install_is_prompt_and_resumed(
    tmp_path: Path, airflow_runtimes: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "runtimes").symlink_to(airflow_runtimes)
    bucket = data_dir / "buckets" / BUCKET
    (bucket / "dags").mkdir(parents=True)
    (bucket / "dags" / "resumed.py").write_text(simple_dag("resumed"))
    # The build runs as the environment's user: the package and its mark live in a folder
    # it can reach (pytest's are closed to other users).
    open_dir = Path(tempfile.mkdtemp(prefix="openmwaa-slowpkg-"))
    os.chmod(open_dir, 0o777)  # noqa: S103
    started = open_dir / "build-started"
    package = _slow_package(open_dir, started)
    os.chmod(package, 0o777)  # noqa: S103 - a build may write beside its sources
    (bucket / "requirements.txt").write_text(f"slowpkg @ file://{package}\n")

    server = Server(data_dir, [])
    server.start()
    try:
        mwaa = server.client()
        mwaa.create_environment(
            Name=NAME,
            ExecutionRoleArn="arn:aws:iam::123456789012:role/airflow",
            SourceBucketArn=f"arn:aws:s3:::{BUCKET}",
            DagS3Path="dags",
            RequirementsS3Path="requirements.txt",
            NetworkConfiguration=NETWORK,
            EnvironmentClass="mw1.micro",
        )
        wait_for(started.exists, 180, "the slow requirement's build to start")
        assert mwaa.get_environment(Name=NAME)["Environment"]["Status"] == "CREATING"

        assert server.process is not None
        stopping = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server took more than {STOP_WITHIN:.0f} s to stop")
        took = time.monotonic() - stopping
        server.process = None
        assert took < STOP_WITHIN
        assert _status_in_store(server)["Status"] == "CREATING", "resumed, not failed"
        deadline = time.monotonic() + 10
        while _builds(package) and time.monotonic() < deadline:
            time.sleep(0.5)
        lingering = [p.info["cmdline"] for p in _builds(package)]  # asserted at the end

        # The next start picks the environment up; with a requirements.txt that installs
        # at once (nothing but a comment) it becomes AVAILABLE.
        (bucket / "requirements.txt").write_text("# nothing to install after all\n")
        server.start()
        env = wait_status(server.client(), NAME, {"AVAILABLE", "CREATE_FAILED"}, 300)
        assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
        assert not lingering, "the stop killed the install's processes"
    finally:
        server.stop()
        for proc in _builds(package):
            proc.kill()
        shutil.rmtree(open_dir, ignore_errors=True)
