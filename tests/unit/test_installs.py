"""Installs and helpers: uv's environment, cancelling at shutdown, cleaning what a kill left.

The cancel test runs real uv on a local package whose build step sleeps, the way a
slow sdist build of a user's requirements.txt would hold a shutdown.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from live_server import wait_for

from openmwaa.runtime import installs
from openmwaa.runtime.base import Interrupted, RuntimeFailure
from openmwaa.runtime.installs import DEFAULT_VERSION, clean_partial, ensure_install, install_key
from openmwaa.runtime.startup import run_startup_script

SLOW_SETUP = """
import os, time
from setuptools import setup
with open({pid!r}, "w") as fh:
    fh.write(str(os.getpid()))
time.sleep(300)
setup(name="slowprobe", version="0.1", py_modules=[])
"""


@pytest.fixture(autouse=True)
def resumed() -> Iterator[None]:
    """Each test starts and ends with helpers allowed (cancel_all is process-wide)."""
    installs.resume()
    yield
    installs.resume()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _fake_ready(path: Path) -> None:
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").write_text("")
    (path / ".openmwaa-ready").write_text("test\n")


def test_uv_env_passes_what_installing_needs_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret")
    monkeypatch.setenv("OPENMWAA_DATABASE_URL", "postgresql://admin:pw@db/x")
    monkeypatch.setenv("DATABASE_PASSWORD", "pw")
    monkeypatch.setenv("UV_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("UV_PUBLISH_TOKEN", "publishing-secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    env = installs.uv_env()
    assert env["UV_INDEX_URL"] == "https://mirror.example/simple"
    assert env["HTTPS_PROXY"] == "http://proxy.example:3128"
    assert env["PATH"] == os.environ["PATH"]
    for name in ("AWS_SECRET_ACCESS_KEY", "OPENMWAA_DATABASE_URL", "DATABASE_PASSWORD"):
        assert name not in env
    assert "UV_PUBLISH_TOKEN" not in env


def test_clean_partial_removes_what_killed_builds_left(tmp_path: Path) -> None:
    runtimes = tmp_path / "runtimes"
    key = install_key(DEFAULT_VERSION, None)
    busy = install_key(DEFAULT_VERSION, "busy-package")
    for name in (f".build-{key}-abc_12", f".check-{key}-x9", f".build-{busy}-zz1", key):
        (runtimes / name / "lib").mkdir(parents=True)
    _fake_ready(runtimes / "airflow-ready")
    with open(runtimes / f".{busy}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process is building ``busy`` right now
        removed = clean_partial(tmp_path)
    assert sorted(removed) == sorted([f".build-{key}-abc_12", f".check-{key}-x9", key])
    left = {p.name for p in runtimes.iterdir() if not p.name.endswith(".lock")}
    assert left == {f".build-{busy}-zz1", "airflow-ready"}


def test_first_ensure_install_cleans_partial_folders(tmp_path: Path) -> None:
    runtimes = tmp_path / "runtimes"
    key = install_key(DEFAULT_VERSION, None)
    _fake_ready(runtimes / key)
    (runtimes / f".build-{key}-killed" / "lib").mkdir(parents=True)
    assert ensure_install(tmp_path, DEFAULT_VERSION) == runtimes / key
    assert not (runtimes / f".build-{key}-killed").exists()


def test_cancel_all_kills_a_running_install_and_interrupts_waiting_ones(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    pid_file = tmp_path / "build.pid"
    (probe / "setup.py").write_text(SLOW_SETUP.format(pid=str(pid_file)))
    requirements = f"slowprobe @ {probe.as_uri()}\n"
    outcomes: dict[str, BaseException | None] = {}

    def install(label: str) -> None:
        try:
            ensure_install(tmp_path, DEFAULT_VERSION, requirements)
            outcomes[label] = None
        except BaseException as exc:  # noqa: BLE001 (recorded for the assertions)
            outcomes[label] = exc

    running = threading.Thread(target=install, args=("running",))
    running.start()
    wait_for(pid_file.is_file, 180, "the requirement's build step to start")
    build = int(pid_file.read_text())
    assert not _gone(build)
    waiting = threading.Thread(target=install, args=("waiting",))
    waiting.start()
    time.sleep(1.0)
    assert "waiting" not in outcomes, "the second call waits for the first one's lock"
    started = time.monotonic()
    installs.cancel_all()
    running.join(30)
    waiting.join(30)
    assert time.monotonic() - started < 10
    assert isinstance(outcomes["running"], Interrupted), outcomes
    assert isinstance(outcomes["waiting"], Interrupted), outcomes
    wait_for(lambda: _gone(build), 10, "the build step to be killed")
    with pytest.raises(Interrupted):
        ensure_install(tmp_path, DEFAULT_VERSION, requirements)
    leftovers = [p.name for p in (tmp_path / "runtimes").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [], "the interrupted build removed its own folders"


def test_startup_script_env_umask_and_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret-startup")
    script = tmp_path / "startup.sh"
    script.write_text("env > seen.txt\necho made > made.txt\nexport FROM_SCRIPT=yes\n")
    env = {**os.environ, "MWAA_AIRFLOW_COMPONENT": "scheduler"}  # a careless caller
    exports = run_startup_script(script, env, tmp_path, tmp_path / "startup.log", set())
    seen = (tmp_path / "seen.txt").read_text()
    assert "server-secret-startup" not in seen
    assert f"HOME={tmp_path}\n" in seen
    assert exports == {"FROM_SCRIPT": "yes"}
    assert (tmp_path / "made.txt").stat().st_mode & 0o077 == 0
    assert (tmp_path / "startup.log").stat().st_mode & 0o077 == 0

    script.write_text("sleep 300 &\necho $! > bg.pid\nsleep 300\n")
    with pytest.raises(RuntimeFailure, match="did not finish"):
        run_startup_script(script, env, tmp_path, tmp_path / "startup.log", set(), timeout=1)
    background = int((tmp_path / "bg.pid").read_text())
    wait_for(lambda: _gone(background), 10, "the script's background process to be killed")
