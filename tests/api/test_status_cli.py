"""``openmwaa status`` shows what the reconciler is doing with each environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from live_server import REQUIRED, Server, wait_for, wait_status

from openmwaa.runtime.tenancy import Tenant, users
from openmwaa.runtime.tenancy.cgroups import Cgroups
from openmwaa.runtime.tenancy.limits import limits_for


def test_status_lists_environments_with_their_state(
    server: Server, mwaa: Any, env_name: str
) -> None:
    mwaa.create_environment(Name=env_name, **REQUIRED)
    wait_status(mwaa, env_name, {"AVAILABLE"})

    # Component health is written by the reconciler's next health check after AVAILABLE.
    def with_health() -> str | None:
        text = server.cli("status").stdout
        return text if "process healthy" in text else None

    out = wait_for(with_health, 30, "component health in openmwaa status")
    line = next(line for line in out.splitlines() if env_name in line)
    assert "AVAILABLE" in line
    assert "process healthy" in out
    mwaa.delete_environment(Name=env_name)


def status(server: Server, *args: str, prefix: tuple[str, ...] = ()) -> Any:
    """``openmwaa status ARGS`` with a terminal wide enough for every column on one line."""
    command = [*prefix, sys.executable, "-m", "openmwaa", "status", *args]
    command += ["--data-dir", str(server.data_dir), *server.args_for_store()]
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(command, capture_output=True, text=True, env=env, check=True)


@pytest.mark.skipif(users.isolation_problem() is not None, reason="needs root")
def test_status_shows_each_environments_user_and_usage(
    server: Server, mwaa: Any, env_name: str
) -> None:
    mwaa.create_environment(Name=env_name, **REQUIRED)
    wait_status(mwaa, env_name, {"AVAILABLE"})
    instance = users.instance_id(server.data_dir)
    # What the local backend does for an environment (the test backend starts nothing).
    user = users.ensure_user(instance, env_name, f"openmwaa {server.data_dir} {env_name}")
    cgroups = Cgroups(instance)
    limits = limits_for("mw1.small", max_workers=1, celery=False)
    procs = cgroups.ensure(env_name, limits) if cgroups.available else ()
    sleeper = subprocess.Popen(Tenant(user.name, user.uid, user.gid, procs).wrap(["sleep", "60"]))
    try:
        if cgroups.available:
            wait_for(lambda: sleeper.pid in cgroups.pids(env_name), 10, "the cgroup's process")
        found = json.loads(status(server, "--json").stdout)
        row = next(r for r in found if r["Name"] == env_name)
        assert row["User"] == user.name
        line = next(ln for ln in status(server).stdout.splitlines() if env_name in ln)
        assert user.name in line
        if cgroups.available:
            assert row["Usage"]["pids"] >= 1
            assert row["Usage"]["memory_limit"] == limits.memory_bytes
            assert f"/{limits.memory_bytes // 2**20} MiB, CPU " in line
            assert "pids" in line
    finally:
        sleeper.kill()
        sleeper.wait()
        if cgroups.available:
            cgroups.remove(env_name)
        users.remove_user(instance, env_name)
        mwaa.delete_environment(Name=env_name)


class UnprivilegedServer(Server):
    """``openmwaa serve`` in a user namespace of its own: not root there."""

    def command(self) -> list[str]:
        return ["unshare", "--user", *super().command()]


def test_status_says_when_environments_are_not_isolated(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    if subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here")
    server = UnprivilegedServer(tmp_path_factory.mktemp("unprivileged"), ["--backend", "test"])
    server.start()
    try:
        wait_for(lambda: (server.data_dir / "exposure.json").exists(), 30, "the start's findings")
        said = "the server does not run as root"
        wait_for(lambda: said in server.log.read_text(), 10, "the warning in the server's log")
    finally:
        server.stop()
    table = status(server).stdout
    found = status(server, "--json").stderr
    for out in (table, found):
        assert "the server does not run as root: environments run as its own user" in out
