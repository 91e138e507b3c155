"""The CLI allow-list and argument parsing, without a server, against the real install's
CLI definition (more forms: tests/unit/test_cli_allowlist.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openmwaa.runtime.airflow_cli import cli_definition
from openmwaa.runtime.installs import DEFAULT_VERSION, install_key
from openmwaa.service.cli_commands import CommandRefused, parse_command


@pytest.fixture(scope="module")
def definition(airflow_runtimes: Path) -> dict[str, Any]:
    """Airflow's own CLI definition of the tests' install."""
    return cli_definition(airflow_runtimes / install_key(DEFAULT_VERSION, None))


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ("dags list", ["dags", "list"]),
        ("airflow dags list", ["dags", "list"]),
        (
            """dags trigger etl --conf '{"a": 1}'""",
            ["dags", "trigger", "etl", "--conf", '{"a": 1}'],
        ),
        ("variables set k 'a; rm -rf /'", ["variables", "set", "k", "a; rm -rf /"]),
        ("version", ["version"]),
        ("tasks states-for-dag-run etl run1", ["tasks", "states-for-dag-run", "etl", "run1"]),
        ("dags test etl -- --subdir", ["dags", "test", "etl", "--", "--subdir"]),
    ],
)
def test_allowed(definition: dict[str, Any], text: str, args: list[str]) -> None:
    assert parse_command(text, definition) == args


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "db reset -y",
        "db migrate",
        "users create -u x",
        "connections export out.json",
        "connections list",
        "pools list",
        "config get-value core fernet_key",
        "webserver",
        "api-server",
        "scheduler",
        "shell",
        "celery worker",
        "tasks run etl t",
        "dags list --subdir /etc",
        "dags list --subdir=/etc",
        "dags list -S/etc",
        "dags show etl --save /tmp/x",
        "dags show etl -s /tmp/x",
        "dags test etl --save-dagrun x.png",
        "dags test etl -f /tmp/any.py",
        "dags test etl --dagfile-path=/tmp/any.py",
        "dags list --sub /etc",
        "dags 'unclosed",
        "rm -rf /",
    ],
)
def test_refused(definition: dict[str, Any], text: str) -> None:
    with pytest.raises(CommandRefused):
        parse_command(text, definition)
