"""Environments' cgroups: the kernel holds a process to its environment's limits.

The first tests use the host's real cgroups (v1 here; skipped where they cannot be
written); v2 and the odd cases run on a fake tree in a temporary folder, which holds
the files the kernel would.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openmwaa.runtime.tenancy import Tenant
from openmwaa.runtime.tenancy import cgroups as cgroups_module
from openmwaa.runtime.tenancy.cgroups import Cgroups
from openmwaa.runtime.tenancy.limits import Limits, host_cpus

MIB = 1024**2
SMALL = Limits(cpus=1.0, memory_bytes=64 * MIB, pids=50)
SRC = Path(__file__).resolve().parents[2] / "src"

ENVS = ("mem", "bomb", "busy", "env", "same")
"""The environments the tests below make on the real hierarchy."""

MakeCgroups = Callable[[], Cgroups]


@pytest.fixture
def make_cgroups() -> Iterator[MakeCgroups]:
    """Cgroups of a fresh instance on the real hierarchy; everything made is removed after."""
    made: list[Cgroups] = []

    def make() -> Cgroups:
        cgroups = Cgroups(f"t{uuid.uuid4().hex[:10]}")
        if not cgroups.available:
            pytest.skip(f"cgroups are not usable here: {cgroups.problem}")
        made.append(cgroups)
        return cgroups

    yield make
    for cgroups in made:
        # Only the names the tests use (never what a folder lists: other servers' groups).
        for env in ENVS:
            cgroups.remove(env)
        cgroups.remove_instance()
        assert not any(folder.exists() for folder in cgroups._instance_dirs)


@pytest.fixture
def cgroups(make_cgroups: MakeCgroups) -> Cgroups:
    return make_cgroups()


def run_in(files: tuple[Path, ...], code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        Tenant(cgroups=files).wrap([sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_process_above_the_memory_limit_is_killed_by_the_kernel(cgroups: Cgroups) -> None:
    files = cgroups.ensure("mem", SMALL)
    assert files and all(f.name == "cgroup.procs" for f in files)
    # Touched pages (bytes * n writes them), 200 MiB against 64 MiB.
    hog = run_in(files, "b = b'x' * (200 * 1024 * 1024); print('survived')")
    assert hog.returncode == -9, (hog.returncode, hog.stdout, hog.stderr)
    assert "survived" not in hog.stdout
    usage = cgroups.usage("mem")
    assert usage is not None and usage.oom_kills is not None and usage.oom_kills >= 1
    fine = run_in(files, "b = b'x' * (16 * 1024 * 1024); print('fine')")
    assert (fine.returncode, fine.stdout.strip()) == (0, "fine"), fine.stderr


def test_a_fork_bomb_stops_at_the_pids_limit(cgroups: Cgroups) -> None:
    files = cgroups.ensure("bomb", SMALL)
    # Forks until the kernel refuses (at most 500: a broken limit must not take the host).
    bomb = run_in(
        files,
        "import errno, os, sys, time\n"
        "n = 0\n"
        "while n < 500:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as exc:\n"
        "        print(n, errno.errorcode[exc.errno], type(exc).__name__, flush=True)\n"
        "        sys.exit(3)\n"
        "    if pid == 0:\n"
        "        os.closerange(0, 3)\n"  # the test reads the bomb's output to its end
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n, 'no limit', flush=True)\n",
    )
    forked, code, kind = bomb.stdout.split()
    assert (bomb.returncode, code, kind) == (3, "EAGAIN", "BlockingIOError"), bomb.stdout
    assert int(forked) < 50
    left = cgroups.pids("bomb")
    assert len(left) == int(forked)
    assert (usage := cgroups.usage("bomb")) is not None and usage.pids == len(left)
    cgroups.remove("bomb")
    for pid in left:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert cgroups.procs_files("bomb") == ()


def test_usage_reports_memory_cpu_and_pids_and_remove_kills_what_is_left(
    cgroups: Cgroups,
) -> None:
    files = cgroups.ensure("busy", SMALL)
    proc = subprocess.Popen(
        Tenant(cgroups=files).wrap(
            [
                sys.executable,
                "-c",
                "import sys, time\n"
                "b = b'x' * (32 * 1024 * 1024)\n"
                "sum(range(3_000_000))\n"
                "print('ready', flush=True)\n"
                "time.sleep(60)\n",
            ]
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert cgroups.pids("busy") == {proc.pid}
        usage = cgroups.usage("busy")
        assert usage is not None
        assert usage.memory_bytes >= 32 * MIB
        assert usage.memory_limit == 64 * MIB
        assert usage.pids >= 1
        assert usage.cpu_seconds > 0
        assert usage.oom_kills == 0
        folders = [f.parent for f in files]
        cgroups.remove("busy")
        assert proc.wait(timeout=10) == -9
        assert not any(f.exists() for f in folders)
        assert cgroups.usage("busy") is None
        assert cgroups.procs_files("busy") == ()
        assert cgroups.pids("busy") == set()
        cgroups.remove("busy")  # again: nothing to do
    finally:
        proc.kill()
        proc.wait()


def test_ensure_is_idempotent_and_resets_limits(cgroups: Cgroups) -> None:
    first = cgroups.ensure("env", SMALL)
    assert cgroups.procs_files("env") == first
    memory = next(f.parent for f in first if "memory" in f.parts)
    # Up (memory+swap must be raised first) and down again (memory first).
    for megabytes in (128, 96):
        limits = Limits(cpus=1.5, memory_bytes=megabytes * MIB, pids=70)
        assert cgroups.ensure("env", limits) == first
        assert int((memory / "memory.limit_in_bytes").read_text()) == megabytes * MIB
        memsw = memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert int(memsw.read_text()) == megabytes * MIB
    assert (memory / "memory.oom_control").read_text().startswith("oom_kill_disable 0")
    cpu = next(f.parent for f in first if (f.parent / "cpu.cfs_quota_us").exists())
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "150000"
    assert (cpu / "cpu.shares").read_text().strip() == "1536"
    pids = next(f.parent for f in first if (f.parent / "pids.max").exists())
    assert (pids / "pids.max").read_text().strip() == "70"


def test_two_instances_do_not_collide(make_cgroups: MakeCgroups) -> None:
    one, two = make_cgroups(), make_cgroups()
    files_one = one.ensure("same", SMALL)
    files_two = two.ensure("same", Limits(cpus=1.0, memory_bytes=128 * MIB, pids=60))
    assert files_one and files_two and not set(files_one) & set(files_two)
    assert (one.usage("same") or pytest.fail()).memory_limit == 64 * MIB
    assert (two.usage("same") or pytest.fail()).memory_limit == 128 * MIB
    one.remove("same")
    one.remove_instance()
    assert one.usage("same") is None
    assert two.procs_files("same") == files_two
    # A reader in another process (`openmwaa status`) finds the same group by instance.
    assert Cgroups(two.instance).usage("same") == two.usage("same")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_user_who_cannot_write_cgroups_is_told_why(cgroups: Cgroups) -> None:
    python = shutil.which("python3.11", path="/usr/bin") or shutil.which("python3", path="/usr/bin")
    if python is None:
        pytest.skip("no system Python that an unprivileged user may run")
    code = (
        f"import sys; sys.path.insert(0, {str(SRC)!r})\n"
        "from openmwaa.runtime.tenancy.cgroups import Cgroups\n"
        "from openmwaa.runtime.tenancy.limits import Limits\n"
        "c = Cgroups('reader')\n"
        "print(c.available, c.ensure('x', Limits(1, 1 << 30, 100)))\n"
        "print(c.problem)\n"
    )
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    available, problem = result.stdout.splitlines()
    assert available == "False ()"
    assert problem.startswith("cgroups are not writable: ")


# -- a fake tree: what the kernel would show ---------------------------------------------

V1_FILES = {
    "memory": {
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.usage_in_bytes": "4096\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    },
    "pids": {"pids.max": "max\n", "pids.current": "3\n"},
    "cpu,cpuacct": {
        "cpu.cfs_period_us": "100000\n",
        "cpu.cfs_quota_us": "-1\n",
        "cpu.shares": "1024\n",
        "cpuacct.usage": "1500000000\n",
    },
}

V2_FILES = {
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
    "cgroup.subtree_control": "\n",
    "cgroup.procs": "",
    "cpu.max": "max 100000\n",
    "cpu.weight": "100\n",
    "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.current": "12345\n",
    "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
    "pids.max": "max\n",
    "pids.current": "2\n",
}


def fake_group(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cgroup.procs").write_text("")
    for name, text in files.items():
        (folder / name).write_text(text)


def test_v1_a_missing_limit_file_is_logged_and_the_rest_is_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for controller, files in V1_FILES.items():
        fake_group(tmp_path / controller, {})
        fake_group(tmp_path / controller / "openmwaa" / "i1" / "env", files)
    # cpu and cpuacct are one hierarchy: one folder, joined once.
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    cgroups = Cgroups("i1", root=tmp_path)
    assert (cgroups.available, cgroups.version, cgroups.problem) == (True, 1, None)
    with caplog.at_level(logging.WARNING):
        files = cgroups.ensure("env", Limits(cpus=1.0, memory_bytes=3 * 1024**3, pids=999))
    assert sorted(f.parent.parent.parent.parent.name for f in files) == [
        "cpu,cpuacct",
        "memory",
        "pids",
    ]
    group = tmp_path / "memory" / "openmwaa" / "i1" / "env"
    assert (group / "memory.limit_in_bytes").read_text() == str(3 * 1024**3)
    assert (tmp_path / "cpu,cpuacct/openmwaa/i1/env/cpu.cfs_quota_us").read_text() == "100000"
    assert (tmp_path / "cpu,cpuacct/openmwaa/i1/env/cpu.shares").read_text() == "1024"
    # As many CPUs as the host has: no quota (it would only throttle bursts), shares stay.
    cgroups.ensure("env", Limits(cpus=float(host_cpus()), memory_bytes=3 * 1024**3, pids=999))
    assert (tmp_path / "cpu,cpuacct/openmwaa/i1/env/cpu.cfs_quota_us").read_text() == "-1"
    assert (tmp_path / "pids/openmwaa/i1/env/pids.max").read_text() == "999"
    # memory.memsw.limit_in_bytes is missing here (swap accounting off), and now one more.
    (group / "memory.oom_control").unlink()
    with caplog.at_level(logging.WARNING):
        assert cgroups.ensure("env", SMALL) == files
    assert "memory.oom_control does not exist" in caplog.text
    usage = cgroups.usage("env")
    assert usage == cgroups_module.Usage(
        memory_bytes=4096, memory_limit=64 * MIB, cpu_seconds=1.5, pids=3, oom_kills=None
    )


def test_v1_without_the_pids_controller_is_not_available(tmp_path: Path) -> None:
    fake_group(tmp_path / "memory", {})
    fake_group(tmp_path / "cpu", {})
    cgroups = Cgroups("i1", root=tmp_path)
    assert not cgroups.available
    assert cgroups.problem == f"cgroups v1 at {tmp_path} lack the pids controller"
    assert cgroups.ensure("env", SMALL) == ()


def test_v1_a_write_refused_for_permission_makes_cgroups_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for controller in ("memory", "pids", "cpu"):
        fake_group(tmp_path / controller, {})

    def refuse(path: object, mode: int = 0o777) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    cgroups = Cgroups("i1", root=tmp_path)
    assert cgroups.available
    monkeypatch.setattr(cgroups_module.os, "mkdir", refuse)
    assert cgroups.ensure("env", SMALL) == ()
    assert not cgroups.available
    assert cgroups.problem is not None
    assert cgroups.problem.startswith("cgroups are not writable: [Errno 13] Permission denied")


def v2_tree(root: Path, own: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_group(root, V2_FILES)
    self_cgroup = root.parent / "self-cgroup"
    self_cgroup.write_text(f"0::{own}\n")
    monkeypatch.setattr(cgroups_module, "SELF_CGROUP", self_cgroup)


def test_v2_sets_limits_and_hands_controllers_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cgroup"
    v2_tree(root, "/system.slice/openmwaa.service", monkeypatch)
    for folder in ("openmwaa", "openmwaa/i1", "openmwaa/i1/env"):
        fake_group(root / folder, V2_FILES)
    (root / "openmwaa/i1/env/cgroup.procs").write_text("12\n34\n")
    cgroups = Cgroups("i1", root=root)
    assert (cgroups.available, cgroups.version, cgroups.problem) == (True, 2, None)
    group = root / "openmwaa/i1/env"
    assert cgroups.ensure("env", Limits(cpus=1.5, memory_bytes=3 * 1024**3, pids=4256)) == (
        group / "cgroup.procs",
    )
    for folder in (root, root / "openmwaa", root / "openmwaa/i1"):
        assert (folder / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (group / "cpu.max").read_text() == "150000 100000"
    assert (group / "cpu.weight").read_text() == "150"
    assert (group / "memory.max").read_text() == str(3 * 1024**3)
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "pids.max").read_text() == "4256"
    assert cgroups.pids("env") == {12, 34}
    (group / "memory.max").write_text("1073741824\n")
    assert cgroups.usage("env") == cgroups_module.Usage(
        memory_bytes=12345, memory_limit=1024**3, cpu_seconds=2.5, pids=2, oom_kills=1
    )
    assert cgroups.usage("other") is None
    assert cgroups.procs_files("other") == ()


def test_v2_uses_the_topmost_cgroup_this_user_may_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cgroup"
    own = "/user.slice/user-1000.slice/user@1000.service/app.slice/openmwaa.scope"
    v2_tree(root, own, monkeypatch)
    delegated = root / "user.slice/user-1000.slice/user@1000.service"
    for folder in ("", "openmwaa", "openmwaa/i1", "openmwaa/i1/env"):
        fake_group(delegated / folder, V2_FILES)
    fake_group(delegated / "app.slice/openmwaa.scope", V2_FILES)
    # What a user may write: only the subtree systemd delegated to them.
    monkeypatch.setattr(
        cgroups_module, "_writable_v2", lambda folder: "user@1000.service" in folder.parts
    )
    cgroups = Cgroups("i1", root=root)
    assert cgroups.available, cgroups.problem
    assert cgroups.ensure("env", SMALL) == (delegated / "openmwaa/i1/env/cgroup.procs",)


def test_v2_not_writable_or_without_controllers_is_not_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cgroup"
    v2_tree(root, "/", monkeypatch)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    cgroups = Cgroups("i1", root=root)
    assert not cgroups.available
    assert cgroups.problem == (
        f"cgroups v2 at {root} do not offer the pids controller (delegate them to this cgroup)"
    )
    monkeypatch.setattr(cgroups_module, "_writable_v2", lambda folder: False)
    cgroups = Cgroups("i1", root=root)
    assert cgroups.problem is not None
    assert cgroups.problem.startswith("cgroups are not writable: no cgroup from ")


@pytest.mark.parametrize("name", ["", "..", "a/b", "../x", ".hidden", "a" * 101])
def test_names_are_one_plain_path_component(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        Cgroups(name, root=tmp_path)
    with pytest.raises(ValueError):
        Cgroups("i1", root=tmp_path).usage(name)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
