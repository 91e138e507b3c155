"""runtime/airflow_cli.py: Airflow's CLI definition, read once per install, safely.

Fake interpreters (shell scripts standing in for ``<install>/bin/python``) show what
the dump runs with and how often; the real installs show that it works for every
supported Airflow version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import installs_root

from openmwaa.runtime import airflow_cli
from openmwaa.runtime.airflow_cli import CACHE_NAME, cli_definition
from openmwaa.runtime.base import RuntimeFailure
from openmwaa.runtime.installs import SUPPORTED_VERSIONS, ensure_install
from openmwaa.service.cli_commands import CommandRefused, parse_command

DEFINITION = {
    "format": 1,
    "airflow_version": "9.9.9",
    "prefix_chars": "-",
    "fromfile_prefix_chars": None,
    "commands": {"version": {"options": [], "positionals": []}},
}


def fake_install(root: Path, body: str) -> Path:
    """An install whose ``bin/python`` is a shell script; ``$3`` is the output file."""
    install = root / "airflow-9.9.9-fake"
    (install / "bin").mkdir(parents=True)
    python = install / "bin" / "python"
    python.write_text(f"#!/bin/sh\necho run >> {root}/runs\n{body}\n")
    python.chmod(0o755)
    return install


def runs(root: Path) -> int:
    path = root / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder outside pytest's (closed) ones: as root, the dump runs as ``nobody``,
    which must reach the fake install and write its marks."""
    folder = Path(tempfile.mkdtemp(prefix="openmwaa-cli-test-"))
    os.chmod(folder, 0o777)  # noqa: S103
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    airflow_cli.forget()


def writes_definition(root: Path) -> str:
    (root / "definition.json").write_text(json.dumps(DEFINITION))
    return f'env > {root}/env.txt\ncp {root}/definition.json "$3"'


def test_read_once_then_cached_in_process_and_in_the_install(open_tmp: Path) -> None:
    install = fake_install(open_tmp, writes_definition(open_tmp))
    assert cli_definition(install) == DEFINITION
    assert cli_definition(install) == DEFINITION
    assert runs(open_tmp) == 1
    assert json.loads((install / CACHE_NAME).read_text()) == DEFINITION
    airflow_cli.forget()  # a new server process: the install's cache file answers
    assert cli_definition(install) == DEFINITION
    assert runs(open_tmp) == 1
    (install / CACHE_NAME).write_text('{"format": 1, "comm')  # a damaged cache is redone
    airflow_cli.forget()
    assert cli_definition(install) == DEFINITION
    assert runs(open_tmp) == 2


def test_concurrent_callers_dump_once(open_tmp: Path) -> None:
    install = fake_install(open_tmp, "sleep 0.5\n" + writes_definition(open_tmp))
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(cli_definition(install))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [DEFINITION] * 4
    assert runs(open_tmp) == 1


def test_the_dump_gets_none_of_the_servers_environment(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-aws-secret-value")
    monkeypatch.setenv("OPENMWAA_DATABASE_URL", "postgresql://admin:server-db-password@db/x")
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", "/server/dags")
    install = fake_install(open_tmp, writes_definition(open_tmp))
    cli_definition(install)
    env = (open_tmp / "env.txt").read_text()
    for value in ("server-aws-secret-value", "server-db-password", "/server/dags"):
        assert value not in env
    home = next(ln.split("=", 1)[1] for ln in env.splitlines() if ln.startswith("AIRFLOW_HOME="))
    assert not Path(home).exists()  # a throw-away home, removed afterwards


def test_a_failure_names_the_useful_line_and_caches_nothing(open_tmp: Path) -> None:
    install = fake_install(
        open_tmp,
        "echo 'Traceback (most recent call last):' >&2\n"
        "echo \"ModuleNotFoundError: No module named 'airflow'\" >&2\nexit 1",
    )
    with pytest.raises(RuntimeFailure, match="ModuleNotFoundError: No module named") as info:
        cli_definition(install)
    assert info.value.code == "AIRFLOW_CLI_UNAVAILABLE"
    assert not (install / CACHE_NAME).exists()


def test_a_hanging_dump_times_out_with_its_children(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(airflow_cli, "TIMEOUT_SECONDS", 1.0)
    install = fake_install(open_tmp, "sleep 60 &\nsleep 60")
    started = time.monotonic()
    with pytest.raises(RuntimeFailure, match="took more than 1 s"):
        cli_definition(install)
    assert time.monotonic() - started < 10


def test_not_an_install(open_tmp: Path) -> None:
    with pytest.raises(RuntimeFailure, match="is not an Airflow install"):
        cli_definition(open_tmp)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_supported_version(version: str) -> None:
    """The same code reads each supported version's parser, and the rules hold for it."""
    definition = cli_definition(ensure_install(installs_root(), version, None, print))
    assert definition["airflow_version"] == version
    assert "dags trigger" in definition["commands"]
    assert parse_command("dags trigger x --conf '{}'", definition)
    for text in ("dags test x -f /tmp/evil.py", "dags test x --dagf /tmp/evil.py", "db reset"):
        with pytest.raises(CommandRefused):
            parse_command(text, definition)
