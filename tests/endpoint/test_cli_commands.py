"""The CLI allow-list and argument parsing, without a server."""

from __future__ import annotations

import pytest

from openmwaa.service.cli_commands import CommandRefused, parse_command


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
def test_allowed(text: str, args: list[str]) -> None:
    assert parse_command(text) == args


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
        "dags 'unclosed",
        "rm -rf /",
    ],
)
def test_refused(text: str) -> None:
    with pytest.raises(CommandRefused):
        parse_command(text)
