"""The Airflow CLI commands a CLI token may run, as MWAA allows them.

The body of ``POST /aws_mwaa/cli`` is the command without ``airflow``
(``dags trigger etl --conf '{"a": 1}'``). It is split with :mod:`shlex` into
arguments and run directly, never through a shell, and only when its command
is on MWAA's list ("Apache Airflow CLI command reference": dags, tasks,
variables, providers, version, cheat-sheet, ...). Commands MWAA refuses (db,
users, connections export, pools, webserver, scheduler, shell, ...) and the
options that would read or write files on the host are refused here with a
message naming the rule.
"""

from __future__ import annotations

import shlex

ALLOWED: frozenset[tuple[str, ...]] = frozenset(
    {
        ("cheat-sheet",),
        ("version",),
        ("dags", "backfill"),
        ("dags", "delete"),
        ("dags", "details"),
        ("dags", "list"),
        ("dags", "list-import-errors"),
        ("dags", "list-jobs"),
        ("dags", "list-runs"),
        ("dags", "next-execution"),
        ("dags", "pause"),
        ("dags", "report"),
        ("dags", "reserialize"),
        ("dags", "show"),
        ("dags", "state"),
        ("dags", "test"),
        ("dags", "trigger"),
        ("dags", "unpause"),
        ("providers", "behaviours"),
        ("providers", "get"),
        ("providers", "hooks"),
        ("providers", "links"),
        ("providers", "list"),
        ("providers", "widgets"),
        ("tasks", "clear"),
        ("tasks", "failed-deps"),
        ("tasks", "list"),
        ("tasks", "render"),
        ("tasks", "state"),
        ("tasks", "states-for-dag-run"),
        ("tasks", "test"),
        ("variables", "delete"),
        ("variables", "get"),
        ("variables", "list"),
        ("variables", "set"),
    }
)
"""MWAA's supported commands (Airflow 2 and 3 lists, where the command exists in Airflow 3)."""

REFUSED_OPTIONS = frozenset(
    {
        "--subdir",  # parse DAG files from any folder of the host
        "--save",  # dags show: write a file on the host
        "--imgcat",
        "--save-dagrun",  # dags test: write a file on the host
        "--show-dagrun",
        "--imgcat-dagrun",
        "--daemon",
        "--pid",
        "--log-file",
        "--stdout",
        "--stderr",
    }
)
REFUSED_SHORT = {"": frozenset({"-S", "-D"}), "dags show": frozenset({"-s"})}
MAX_COMMAND = 16 * 1024


class CommandRefused(Exception):
    """The command is not one MWAA runs; ``str()`` says why, for the caller."""


def _groups() -> str:
    return ", ".join(sorted({" ".join(c) for c in ALLOWED}))


def parse_command(text: str) -> list[str]:
    """The arguments to pass to ``airflow``, or CommandRefused."""
    if len(text) > MAX_COMMAND:
        raise CommandRefused(f"The command is longer than {MAX_COMMAND} characters.")
    try:
        args = shlex.split(text, comments=False, posix=True)
    except ValueError as e:
        raise CommandRefused(f"The command cannot be parsed: {e}.") from None
    if args and args[0] == "airflow":
        args = args[1:]
    if not args:
        raise CommandRefused(
            "The request body must be an Airflow CLI command, e.g. 'dags list'. "
            f"Supported commands: {_groups()}."
        )
    command = tuple(args[:2]) if tuple(args[:1]) not in ALLOWED else tuple(args[:1])
    if command not in ALLOWED:
        shown = " ".join(a for a in args[:2] if not a.startswith("-"))
        raise CommandRefused(
            f"airflow {shown} is not supported on this environment, as on Amazon MWAA. "
            f"Supported commands: {_groups()}."
        )
    refused_short = REFUSED_SHORT[""] | REFUSED_SHORT.get(" ".join(command), frozenset())
    for arg in args[len(command) :]:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in REFUSED_OPTIONS or any(
            arg == short or (arg.startswith(short) and not arg.startswith("--"))
            for short in refused_short
        ):
            raise CommandRefused(
                f"Option {name} of airflow {' '.join(command)} is not supported on this "
                "environment: it reads or writes files on the web server's host."
            )
    return args
