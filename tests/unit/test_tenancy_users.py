"""Each environment's OS user: made once, named apart per server, removed with every
process it runs, and never an account openmwaa did not make (real useradd/userdel)."""

from __future__ import annotations

import grp
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from openmwaa.runtime.tenancy import Tenant
from openmwaa.runtime.tenancy import users as u

as_root = pytest.mark.skipif(
    u.isolation_problem() is not None, reason=f"needs root: {u.isolation_problem()}"
)
VALID_NAME = re.compile(r"^[a-z_][a-z0-9_-]*$")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A server's data dir; every user made for it is removed afterwards."""
    yield tmp_path
    for name in u.users_of(str(tmp_path)):
        u.remove_user_named(name)


def make(data_dir: Path, env: str) -> u.EnvUser:
    return u.ensure_user(u.instance_id(data_dir), env, f"openmwaa {data_dir} {env}")


def test_names_are_valid_short_and_stable() -> None:
    long_env = "My-Environment_" + "x" * 65
    assert len(long_env) == 80
    name = u.user_name("0123456789", long_env)
    assert len(name) <= 32 and VALID_NAME.match(name), name
    assert name == u.user_name("0123456789", long_env)
    assert name != u.user_name("0123456780", long_env)
    assert u.user_name("0123456789", "Dev").startswith("mwaa-dev-")


def test_instance_id_is_the_resolved_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert u.instance_id(tmp_path / "link") == u.instance_id(tmp_path / "real")
    assert re.fullmatch(r"[0-9a-f]{10}", u.instance_id(tmp_path))


def test_isolation_problem_outside_root() -> None:
    # A user namespace without mappings: the same interpreter, seen as uid 65534.
    code = "from openmwaa.runtime.tenancy.users import isolation_problem as p; print(p())"
    run = subprocess.run(
        ["unshare", "--user", sys.executable, "-c", code], capture_output=True, text=True
    )
    if run.returncode != 0:
        pytest.skip(f"no user namespaces here: {run.stderr.strip()}")
    assert "does not run as root" in run.stdout


@as_root
def test_ensure_user_twice_gives_the_same_user(data_dir: Path) -> None:
    first = make(data_dir, "Analytics")
    again = make(data_dir, "Analytics")
    assert first == again
    entry = pwd.getpwnam(first.name)
    assert u.ID_RANGE[0] <= first.uid <= u.ID_RANGE[1]
    assert u.ID_RANGE[0] <= first.gid <= u.ID_RANGE[1]
    assert grp.getgrgid(first.gid).gr_name == first.name
    assert (entry.pw_dir, entry.pw_shell) == ("/nonexistent", "/usr/sbin/nologin")
    assert entry.pw_gecos == f"openmwaa {data_dir} Analytics"
    assert u.lookup_user(u.instance_id(data_dir), "Analytics") == first
    assert u.lookup_user(u.instance_id(data_dir), "Other") is None


@as_root
def test_an_80_character_environment_name_fits(data_dir: Path) -> None:
    env = "E" + "n" * 79
    user = make(data_dir, env)
    assert len(user.name) <= 32
    assert pwd.getpwuid(user.uid).pw_name == user.name


@as_root
def test_two_servers_with_the_same_environment_name_get_two_users(data_dir: Path) -> None:
    (data_dir / "a").mkdir()
    (data_dir / "b").mkdir()
    one, two = make(data_dir / "a", "Prod"), make(data_dir / "b", "Prod")
    assert one.name != two.name
    assert one.uid != two.uid and one.gid != two.gid
    assert u.users_of(str(data_dir / "a")) == [one.name]
    assert u.users_of(str(data_dir)) == sorted([one.name, two.name])


@as_root
def test_users_of_matches_whole_folders(data_dir: Path) -> None:
    (data_dir / "ab").mkdir()
    user = make(data_dir / "ab", "Env")
    assert u.users_of(str(data_dir / "a")) == []
    assert u.users_of(str(data_dir / "ab")) == [user.name]


@as_root
def test_remove_user_kills_its_processes_then_removes_it(data_dir: Path) -> None:
    user = make(data_dir, "Doomed")
    tenant = Tenant(user.name, user.uid, user.gid)
    # One direct child, and one that left its parent (re-parented, in its own session).
    sleeper = subprocess.Popen(tenant.wrap(["sleep", "60"]))
    subprocess.run(tenant.wrap(["sh", "-c", "setsid sleep 61 >/dev/null 2>&1 &"]), check=True)
    deadline = time.monotonic() + 10
    while len(of_uid(user.uid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(of_uid(user.uid)) == 2

    u.remove_user(u.instance_id(data_dir), "Doomed")

    assert sleeper.wait(5) == -9
    assert of_uid(user.uid) == []
    assert u.lookup_user(u.instance_id(data_dir), "Doomed") is None
    with pytest.raises(KeyError):
        pwd.getpwnam(user.name)
    with pytest.raises(KeyError):
        grp.getgrnam(user.name)
    u.remove_user(u.instance_id(data_dir), "Doomed")  # nothing left: nothing to do


def of_uid(uid: int) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"] and uid in p.info["uids"] and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


@as_root
def test_a_user_openmwaa_did_not_make_is_never_removed_nor_used(data_dir: Path) -> None:
    instance = u.instance_id(data_dir)
    name = u.user_name(instance, "Taken")
    low, high = u.ID_RANGE
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--comment", "someone else",
         "-K", f"SYS_UID_MIN={low}", "-K", f"SYS_UID_MAX={high}", name],
        check=True,
    )  # fmt: skip
    try:
        assert low <= pwd.getpwnam(name).pw_uid  # only its comment tells it apart
        with pytest.raises(u.UserError, match="not made by openmwaa"):
            u.remove_user(instance, "Taken")
        assert pwd.getpwnam(name).pw_gecos == "someone else"
        assert u.lookup_user(instance, "Taken") is None
        with pytest.raises(u.UserError, match="already exists for something else"):
            make(data_dir, "Taken")
        assert u.users_of(str(data_dir)) == []
    finally:
        subprocess.run(["userdel", name], check=True)


@as_root
def test_users_made_at_once_by_several_processes_all_exist(data_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from openmwaa.runtime.tenancy import users as u; "
        "d, e = Path(sys.argv[1]), sys.argv[2]; "
        "u.ensure_user(u.instance_id(d), e, f'openmwaa {d} {e}')"
    )
    makers = [
        subprocess.Popen([sys.executable, "-c", code, str(data_dir), f"Env{i}"]) for i in range(8)
    ]
    assert [m.wait(60) for m in makers] == [0] * 8
    made = [u.lookup_user(u.instance_id(data_dir), f"Env{i}") for i in range(8)]
    assert all(made) and len({m.uid for m in made if m}) == 8
