"""How work is shared between the control plane's host and hosts that joined, and what a
worker host's copy of the folders looks like after each sync."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from openmwaa.runtime import bundles
from openmwaa.service.worker_hosts import RemoteHost, WorkerHosts


def hosts_with(*entries: tuple[str, int, int]) -> WorkerHosts:
    """WorkerHosts for environment ``e`` with hosts (name, limit, workers up), joined in order."""
    hosts = WorkerHosts(backend=None, environments=None)  # type: ignore[arg-type]
    now = time.monotonic()
    hosts._hosts["e"] = {
        name: RemoteHost(name, limit, up, 0, joined=now + i, seen=now)
        for i, (name, limit, up) in enumerate(entries)
    }
    return hosts


def assigned(hosts: WorkerHosts) -> dict[str, int]:
    return {h.host: h.assigned for h in hosts.live("e")}


def test_without_hosts_everything_runs_here() -> None:
    assert hosts_with().assign("e", 3, local_workers=1) == 3


def test_joined_hosts_are_filled_first_in_order_up_to_their_limit() -> None:
    hosts = hosts_with(("a", 2, 2), ("b", 1, 1))
    assert hosts.assign("e", 4, local_workers=1) == 1
    assert assigned(hosts) == {"a": 2, "b": 1}
    assert hosts.assign("e", 2, local_workers=1) == 0
    assert assigned(hosts) == {"a": 2, "b": 0}


def test_local_workers_are_kept_until_the_host_taking_over_runs_its_own() -> None:
    starting = hosts_with(("a", 1, 0))
    assert starting.assign("e", 1, local_workers=1) == 1
    running = hosts_with(("a", 1, 1))
    assert running.assign("e", 1, local_workers=1) == 0


def test_a_silent_host_is_forgotten() -> None:
    hosts = hosts_with(("a", 4, 4))
    hosts._hosts["e"]["a"].seen -= 60
    assert hosts.assign("e", 2, local_workers=0) == 2
    assert hosts.live("e") == []


def test_folders_are_mirrored_file_by_file(tmp_path: Path) -> None:
    src = {"dags": tmp_path / "src" / "dags", "plugins": tmp_path / "src" / "plugins"}
    (src["dags"] / "sub").mkdir(parents=True)
    (src["dags"] / "a.py").write_text("a = 1\n")
    (src["dags"] / "sub" / "b.py").write_text("b = 1\n")
    (src["dags"] / "__pycache__").mkdir()
    (src["dags"] / "__pycache__" / "a.pyc").write_bytes(b"x")
    target = tmp_path / "home"
    bundles.unpack(bundles.pack(src), target)
    assert (target / "dags" / "sub" / "b.py").read_text() == "b = 1\n"
    assert (target / "plugins").is_dir()
    assert not (target / "dags" / "__pycache__").exists()
    before = bundles.digest(src)
    (src["dags"] / "sub" / "b.py").unlink()
    (src["dags"] / "a.py").write_text("a = 2\n")
    assert bundles.digest(src) != before
    bundles.unpack(bundles.pack(src), target)
    assert (target / "dags" / "a.py").read_text() == "a = 2\n"
    assert not (target / "dags" / "sub" / "b.py").exists()
    assert sorted(p.name for p in target.iterdir()) == ["dags", "plugins"]


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil.py", "dags/../../evil.py"])
def test_archives_reaching_outside_are_refused(tmp_path: Path, name: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info: Any = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="refusing"):
        bundles.unpack(buf.getvalue(), tmp_path / "home")
    assert not (tmp_path / "evil.py").exists()


def test_portable_settings_leave_host_paths_and_signing_keys_behind() -> None:
    env = {
        "AIRFLOW_HOME": "/x",
        "AIRFLOW__API_AUTH__JWT_SECRET": "s",
        "AIRFLOW__CELERY__BROKER_URL": "redis://h:6379/0",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:1/execution/",
    }
    assert bundles.portable_env(env) == {"AIRFLOW__CELERY__BROKER_URL": "redis://h:6379/0"}
