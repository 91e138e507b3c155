"""What the server creates is its owner's only, whoever made the data dir and whatever the
shell's umask; and the server has every file descriptor its hard limit allows."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from live_server import REQUIRED, Server, wait_status


def _umask(pid: int) -> int:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if "Umask" in ln)
    return int(line.split()[1], 8)


def _open_files(pid: int) -> tuple[int, int]:
    line = next(
        ln for ln in Path(f"/proc/{pid}/limits").read_text().splitlines() if "open files" in ln
    )
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


@pytest.fixture
def shared_umask() -> Iterator[None]:
    """Start the server as from a shell with a permissive umask."""
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_server_and_its_children_create_private_files(tmp_path: Path, shared_umask: None) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o775)
    os.chmod(data_dir, 0o775)  # as `mkdir` by someone else, or an older release, left it
    srv = Server(data_dir, ["--backend", "test"], soft_open_files=256)
    srv.start()
    try:
        assert srv.process is not None
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert _umask(srv.process.pid) == 0o077
        soft, hard = _open_files(srv.process.pid)
        assert soft == hard > 256, "the soft limit is raised to the hard one"

        mwaa = srv.client()
        mwaa.create_environment(Name="private", **REQUIRED)
        wait_status(mwaa, "private", {"AVAILABLE"})
        children = psutil.Process(srv.process.pid).children(recursive=True)
        assert children, "the test backend runs a process per environment"
        assert all(_umask(child.pid) == 0o077 for child in children)
        made = [p for p in data_dir.rglob("*") if not p.is_symlink() and p != srv.log]
        assert made
        loose = [p for p in made if stat.S_IMODE(p.stat().st_mode) & 0o077]
        assert not loose, f"readable by others: {loose}"
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "command",
    [["install", "--airflow-version", "0.0"], ["status"], ["keys", "list"]],
    ids=["install", "status", "keys"],
)
def test_every_command_makes_the_data_dir_private(tmp_path: Path, command: list[str]) -> None:
    """`make install` runs `openmwaa install`, `make demo` `openmwaa demo`: all secure it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)
    command += ["--data-dir", str(data_dir)]
    subprocess.run([sys.executable, "-m", "openmwaa", *command], capture_output=True, check=False)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_a_damaged_ports_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    """Never a silent reset: that would move every environment's WebserverUrl."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "ports.json").write_text('{"etl": {"api": 281')
    done = Server(data_dir, ["--backend", "test"]).run_once()
    assert done.returncode != 0
    message = " ".join(done.stdout.split() + done.stderr.split())
    assert f"{data_dir / 'ports.json'}: is not valid JSON" in message, message
    assert "Traceback" not in message
    assert (data_dir / "ports.json").read_text() == '{"etl": {"api": 281'
