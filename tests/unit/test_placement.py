"""Environments' users reach their folders and nothing else of the server's: a data dir
in a closed place has its environments and runtimes moved out to the tenant base."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmwaa.runtime.tenancy import Tenant
from openmwaa.runtime.tenancy import placement as pl
from openmwaa.runtime.tenancy import users as u

pytestmark = pytest.mark.skipif(
    u.isolation_problem() is not None, reason=f"needs root: {u.isolation_problem()}"
)


def open_folder(prefix: str, parent: str = "/tmp", mode: int = 0o711) -> Path:
    """A folder other users can pass through (pytest's tmp_path is under a 0700 one)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    folder.chmod(mode)
    return folder


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The tenant base of the test: a fresh folder under /tmp."""
    outer = open_folder("openmwaa-tenant-base-")
    monkeypatch.setenv(pl.BASE_VARIABLE, str(outer / "tenants"))
    yield outer / "tenants"
    shutil.rmtree(outer)


@pytest.fixture
def closed_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir as the server makes it (0700) inside a 0700 folder, holding an
    environment and an install; users made for it are removed afterwards."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    data_dir = closed / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "environments" / "Env1").mkdir(parents=True)
    (data_dir / "environments" / "Env1" / "airflow.cfg").write_text("[core]\n")
    (data_dir / "runtimes" / "key1" / "bin").mkdir(parents=True)
    (data_dir / "secret").write_text("the admin key\n")
    (data_dir / "secret").chmod(0o644)  # only the folders above keep it from others
    yield data_dir
    for name in u.users_of(str(tmp_path)):
        u.remove_user_named(name)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_closed_data_dir_moves_out_and_its_users_reach_only_their_folder(
    base: Path, closed_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = closed_data_dir
    instance = u.instance_id(data_dir)
    with caplog.at_level(logging.INFO, logger=pl.__name__):
        placed = pl.expose(data_dir)

    real = base.resolve() / instance
    assert placed == {"environments": real / "environments", "runtimes": real / "runtimes"}
    for sub in ("environments", "runtimes"):
        assert (data_dir / sub).is_symlink() and (data_dir / sub).resolve() == real / sub
        assert mode(real / sub) == 0o711
    assert (real / "environments" / "Env1" / "airflow.cfg").read_text() == "[core]\n"
    assert (real / "runtimes" / "key1" / "bin").is_dir()
    assert (mode(base), mode(real)) == (0o711, 0o711)
    assert (real / pl.MARKER).read_text() == f"{data_dir}\n"
    assert pl.placements_of(str(data_dir.parent)) == [real]  # what the test cleanup finds
    assert pl.placements_of(f"{data_dir}x") == []
    assert pl.tenant_root(data_dir) == real / "environments"
    assert pl.runtimes_root(data_dir) == real / "runtimes"
    closed = pl.closed_ancestor(data_dir)  # pytest's own 0700 folder
    assert closed is not None and data_dir.is_relative_to(closed)
    assert f"environments moved to {real / 'environments'} because {closed} is closed" in (
        caplog.text
    )

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=pl.__name__):
        assert pl.expose(data_dir) == placed  # a second time: nothing to do
    assert "moved" not in caplog.text

    user = u.ensure_user(instance, "Env1", f"openmwaa {data_dir} Env1")
    (real / "environments" / "Env1").chmod(0o755)
    tenant = Tenant(user.name, user.uid, user.gid)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(tenant.wrap(argv), capture_output=True, text=True)

    listing = run("ls", str(real / "environments" / "Env1"))
    assert listing.returncode == 0 and "airflow.cfg" in listing.stdout, listing.stderr
    assert run("cat", str(data_dir / "secret")).returncode != 0
    assert run("ls", str(data_dir / "environments" / "Env1")).returncode != 0
    # Passable, not listable: other environments' names are not shown.
    assert "Permission denied" in run("ls", str(real / "environments")).stderr
    assert "Permission denied" in run("ls", str(real / "runtimes")).stderr
    assert run("ls", str(real / "runtimes" / "key1")).stdout == "bin\n"  # a known install


def test_a_reachable_data_dir_keeps_its_folders(base: Path) -> None:
    outer = open_folder("openmwaa-open-data-")
    try:
        data_dir = outer / "data"
        data_dir.mkdir(mode=0o711)
        (data_dir / "environments").mkdir(mode=0o700)
        placed = pl.expose(data_dir)
        assert placed == {
            "environments": data_dir / "environments",
            "runtimes": data_dir / "runtimes",
        }
        for sub in ("environments", "runtimes"):
            assert not (data_dir / sub).is_symlink() and mode(data_dir / sub) == 0o711
        assert not base.exists()
    finally:
        shutil.rmtree(outer)


def test_runtimes_linked_to_a_shared_reachable_folder_stay_there(
    base: Path, closed_data_dir: Path
) -> None:
    shared = open_folder("openmwaa-shared-runtimes-", mode=0o755)
    try:
        (shared / "runtimes").mkdir(mode=0o700)
        shutil.rmtree(closed_data_dir / "runtimes")
        (closed_data_dir / "runtimes").symlink_to(shared / "runtimes")
        placed = pl.expose(closed_data_dir)
        assert placed["runtimes"] == shared / "runtimes"
        assert mode(shared / "runtimes") == 0o711
        assert mode(shared) == 0o755  # nothing above it is changed
        assert placed["environments"].is_relative_to(base.resolve())
    finally:
        shutil.rmtree(shared)


def test_a_link_to_a_closed_folder_is_refused(base: Path, closed_data_dir: Path) -> None:
    hidden = closed_data_dir.parent / "hidden-runtimes"
    hidden.mkdir()
    shutil.rmtree(closed_data_dir / "runtimes")
    (closed_data_dir / "runtimes").symlink_to(hidden)
    with pytest.raises(
        pl.PlacementError, match=f"links to {hidden}, which other users cannot reach"
    ):
        pl.expose(closed_data_dir)


def test_a_base_others_could_change_is_refused(
    monkeypatch: pytest.MonkeyPatch, closed_data_dir: Path
) -> None:
    loose = open_folder("openmwaa-loose-base-", mode=0o777)
    try:
        monkeypatch.setenv(pl.BASE_VARIABLE, str(loose / "tenants"))
        with pytest.raises(pl.PlacementError, match=f"{loose} can be changed by other users"):
            pl.expose(closed_data_dir)
        assert not (closed_data_dir / "environments").is_symlink()
    finally:
        shutil.rmtree(loose)


def test_a_closed_base_is_refused(monkeypatch: pytest.MonkeyPatch, closed_data_dir: Path) -> None:
    shut = open_folder("openmwaa-closed-base-", mode=0o700)
    try:
        monkeypatch.setenv(pl.BASE_VARIABLE, str(shut / "tenants"))
        with pytest.raises(pl.PlacementError, match=f"cannot be reached.*{shut} is closed"):
            pl.expose(closed_data_dir)
    finally:
        shutil.rmtree(shut)


def test_a_move_to_another_filesystem_keeps_owners_modes_and_links(
    monkeypatch: pytest.MonkeyPatch, closed_data_dir: Path
) -> None:
    if os.stat("/dev/shm").st_dev == os.stat(closed_data_dir).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the tests' tmp")
    other = open_folder("openmwaa-shm-base-", parent="/dev/shm")
    try:
        monkeypatch.setenv(pl.BASE_VARIABLE, str(other / "tenants"))
        env = closed_data_dir / "environments" / "Env1"
        (env / "dags").mkdir()
        os.chown(env / "dags", 12345, 12346)
        (env / "dags" / "dag.py").write_text("x = 1\n")
        os.chown(env / "dags" / "dag.py", 12345, 12346)
        (env / "dags" / "dag.py").chmod(0o640)
        (env / "link").symlink_to("dags/dag.py")
        os.mkfifo(env / "fifo")

        real = pl.expose(closed_data_dir)["environments"] / "Env1"

        assert (closed_data_dir / "environments").is_symlink() and env.resolve() == real
        st = os.stat(real / "dags" / "dag.py")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12345, 12346, 0o640)
        assert os.stat(real / "dags").st_uid == 12345
        assert os.readlink(real / "link") == "dags/dag.py"
        assert not (real / "fifo").exists()
        assert [p.name for p in real.parent.iterdir()] == ["Env1"]
    finally:
        shutil.rmtree(other)
