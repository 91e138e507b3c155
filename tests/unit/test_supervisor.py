"""The supervisor with real child processes: environment, umask, log rotation, crash loops."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import wait_for

from openmwaa.runtime import supervisor as supervisor_module
from openmwaa.runtime.children import child_env, inherited_env
from openmwaa.runtime.supervisor import ComponentSpec, Supervisor
from openmwaa.runtime.workers import WorkerPool

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "server-secret-aws",
    "AWS_ACCESS_KEY_ID": "server-key-id",
    "OPENMWAA_BROKER_URL": "redis://admin:server-secret-broker@h/0",
    "SOME_API_TOKEN": "server-secret-token",
}


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor(poll_interval=0.1, log_max_bytes=20_000, log_keep=2)
    yield sup
    sup.stop_all(grace=2)


@pytest.fixture
def server_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_TIME", "C")
    return SECRETS


def _spec(tmp_path: Path, name: str, code: str, env: dict[str, str] | None = None) -> ComponentSpec:
    return ComponentSpec(
        name=name,
        argv=[sys.executable, "-c", code],
        env=env if env is not None else inherited_env(),
        cwd=tmp_path,
        log_path=tmp_path / "logs" / f"{name}.log",
    )


def test_inherited_env_is_an_allow_list(server_secrets: dict[str, str]) -> None:
    env = inherited_env(Path("/somewhere"))
    assert not set(server_secrets) & set(env)
    assert env["HOME"] == "/somewhere"
    assert env["LC_TIME"] == "C"
    assert env["PATH"] == os.environ["PATH"]


def test_child_env_drops_what_was_copied_from_the_server(
    server_secrets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    copied = {**os.environ, "PYTHONUNBUFFERED": "1", "AWS_DEFAULT_REGION": "eu-west-1"}
    env = child_env(copied, tmp_path)
    assert not set(server_secrets) & set(env)
    assert env["HOME"] == str(tmp_path), "the server user's home is replaced"
    # Set by the environment on purpose (not the server's values): kept.
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"


def test_component_gets_clean_env_home_and_umask(
    supervisor: Supervisor, server_secrets: dict[str, str], tmp_path: Path
) -> None:
    code = (
        "import json, os, pathlib; pathlib.Path('made').write_text('x');"
        "pathlib.Path('env.json').write_text(json.dumps(dict(os.environ)))"
    )
    # A careless backend copying the server's whole environment still leaks nothing.
    supervisor.launch("g", [_spec(tmp_path, "c", code, dict(os.environ))], tmp_path / "run",
                      restart_on_exit=False)  # fmt: skip
    wait_for(lambda: (tmp_path / "env.json").is_file(), 20, "the component's env")
    time.sleep(0.2)
    env = json.loads((tmp_path / "env.json").read_text())
    leaked = [v for v in server_secrets.values() if v in json.dumps(env)]
    assert leaked == []
    assert env["HOME"] == str(tmp_path)
    assert (tmp_path / "made").stat().st_mode & 0o077 == 0, "umask 077"
    assert (tmp_path / "logs" / "c.log").stat().st_mode & 0o077 == 0


def test_logs_rotate_by_size_while_the_component_writes(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    code = (
        "import sys, time\nfor i in range(10**6):\n print('line', i, 'x' * 100); time.sleep(0.0005)"
    )
    supervisor.launch("g", [_spec(tmp_path, "chatty", code)], tmp_path / "run",
                      restart_on_exit=False)  # fmt: skip
    log = tmp_path / "logs" / "chatty.log"
    wait_for(lambda: log.with_name("chatty.log.2").is_file(), 60, "two rotations")
    time.sleep(1.0)
    supervisor.stop("g", grace=2)
    sizes = {p.name: p.stat().st_size for p in log.parent.iterdir()}
    assert set(sizes) == {"chatty.log", "chatty.log.1", "chatty.log.2"}, sizes
    # Bounded: the limit plus what one poll interval adds; never sparse.
    assert all(size < 20_000 + 200_000 for size in sizes.values()), sizes
    assert b"\0" not in log.read_bytes(), "the child kept appending at the new end"
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("line")]
    assert lines, "the component kept writing to its (truncated) log"


def test_crash_looping_component_is_reported_with_its_error(
    supervisor: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "BACKOFF_MAX", 0.5)
    crash = "import sys; print('starting up'); print('ValueError: no broker'); sys.exit(3)"
    steady = "import time; time.sleep(60)"
    supervisor.launch(
        "g",
        [_spec(tmp_path, "worker-1", crash), _spec(tmp_path, "scheduler", steady)],
        tmp_path / "run",
        restart_on_exit=True,
    )
    wait_for(lambda: supervisor.states("g")["worker-1"] == "crash-looping", 30, "crash loop")
    assert supervisor.states("g")["scheduler"] == "running"
    reasons = supervisor.crash_looping("g")
    assert set(reasons) == {"worker-1"}
    assert "(code 3)" in reasons["worker-1"]
    assert reasons["worker-1"].endswith("ValueError: no broker")
    assert supervisor.last_log_line("g", "worker-1") == "ValueError: no broker"
    assert WorkerPool(supervisor).crash_looping("g") == reasons


def test_one_exit_is_not_a_crash_loop(supervisor: Supervisor, tmp_path: Path) -> None:
    flag = tmp_path / "ran-once"
    code = (
        f"import pathlib, sys, time; p = pathlib.Path({str(flag)!r})\n"
        "if not p.exists(): p.write_text('1'); sys.exit(1)\n"
        "time.sleep(60)"
    )
    supervisor.launch("g", [_spec(tmp_path, "api-server", code)], tmp_path / "run",
                      restart_on_exit=True)  # fmt: skip
    wait_for(lambda: supervisor.components("g")["api-server"].restarts == 1, 20, "a restart")
    wait_for(lambda: supervisor.states("g")["api-server"] == "running", 20, "running again")
    assert supervisor.crash_looping("g") == {}
