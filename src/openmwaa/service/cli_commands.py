"""The Airflow CLI commands a CLI token may run, as MWAA allows them, checked exactly.

The body of ``POST /aws_mwaa/cli`` is the command without ``airflow``
(``dags trigger etl --conf '{"a": 1}'``). It is split with :mod:`shlex` into
arguments and run directly, never through a shell, and only when:

- its command is on MWAA's list (:data:`ALLOWED`, "Apache Airflow CLI command
  reference": dags, tasks, variables, providers, version, cheat-sheet, ...) and
  exists in the environment's Airflow version;
- every option is spelled exactly as that Airflow version defines it for that
  command. The definition is Airflow's own parser of the environment's install
  (runtime/airflow_cli.py), not a hand list, so the same rules hold for every
  supported version. Airflow's argparse would accept abbreviations (``--dagf`` for
  ``--dagfile-path``); they are refused, so an option's identity is never a guess.
  ``--opt=value`` is accepted only for options that take a value; a cluster of
  short options (``-yv``) only when each is defined (the last may take the rest
  as its value, ``-ojson``, as argparse reads it);
- no option reads or writes files on the host or runs code from a path.

Refused options (:data:`REFUSED_OPTIONS`, by long name: refusing an option refuses
its short aliases too, which mean different things in different commands, e.g.
``-f`` is ``--dagfile-path`` in ``dags test`` but ``--only-failed`` in ``tasks
clear``):

==========================  ======================================================
``--subdir`` / ``-S``       parses DAG files from any folder of the host (Airflow 2)
``--dagfile-path`` / ``-f`` ``dags test``: imports and runs any .py file of the host
``--save`` / ``-s``         ``dags show``: writes a file on the host
``--save-dagrun``           ``dags test``: writes a file on the host
``--imgcat``,               run the ``imgcat`` program / render images for a
``--imgcat-dagrun``,        terminal, not for an HTTP response
``--show-dagrun``
``--env-vars``              ``tasks test``: sets environment variables of the CLI's
                            process (e.g. point Airflow at another DAG folder)
``--post-mortem`` / ``-m``  ``tasks test``: opens an interactive debugger
``--daemon``, ``--pid``,    server commands: detach, write pid and log files
``--log-file``,
``--stdout``, ``--stderr``
==========================  ======================================================

and, whatever its name, any option or positional argument whose flag, dest or
metavar names a file, path, folder or directory (:func:`_names_a_file`), so an
option a later Airflow version adds with such a meaning is refused before anyone
lists it here.

Arguments that look like options are read as argparse reads them: a value that
starts with ``-`` cannot follow an option as a separate argument (argparse would
take it for an option), so it must be written ``--opt=-value``; ``--`` ends the
options (what follows is positional); negative numbers are values.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

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
"""MWAA's supported commands (Airflow 2 and 3 lists); those a version lacks are refused."""

REFUSED_OPTIONS: Mapping[str, str] = {
    "--subdir": "it parses DAG files from any folder of the host",
    "--dagfile-path": "it runs a Python file of the host",
    "--save": "it writes a file on the host",
    "--save-dagrun": "it writes a file on the host",
    "--imgcat": "it runs a terminal image program",
    "--imgcat-dagrun": "it runs a terminal image program",
    "--show-dagrun": "it renders a diagram for a terminal",
    "--env-vars": "it sets environment variables of the CLI's process",
    "--post-mortem": "it opens an interactive debugger",
    "--daemon": "it detaches a process on the host",
    "--pid": "it writes a file on the host",
    "--log-file": "it writes a file on the host",
    "--stdout": "it writes a file on the host",
    "--stderr": "it writes a file on the host",
}
"""Options refused by long name, with the reason shown to the caller (see the table above)."""

_FILE_WORDS = re.compile(r"file|path|dir|folder", re.IGNORECASE)
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # argparse's own test
MAX_COMMAND = 16 * 1024


class CommandRefused(Exception):
    """The command is not one MWAA runs; ``str()`` says why, for the caller."""


def parse_command(text: str, definition: Mapping[str, Any]) -> list[str]:
    """The arguments to pass to ``airflow``, or CommandRefused.

    ``definition`` is Airflow's CLI definition of the environment's install
    (``AirflowCli.definition``, from runtime/airflow_cli.py).
    """
    if len(text) > MAX_COMMAND:
        raise CommandRefused(f"The command is longer than {MAX_COMMAND} characters.")
    try:
        args = shlex.split(text, comments=False, posix=True)
    except ValueError as e:
        raise CommandRefused(f"The command cannot be parsed: {e}.") from None
    if args and args[0] == "airflow":
        args = args[1:]
    commands: Mapping[str, Any] = definition.get("commands") or {}
    version = str(definition.get("airflow_version") or "")
    if not args:
        raise CommandRefused(
            "The request body must be an Airflow CLI command, e.g. 'dags list'. "
            f"Supported commands: {_supported(commands)}."
        )
    if any("\x00" in arg for arg in args):
        raise CommandRefused("The command contains a NUL character.")
    command = _command(args, commands, version)
    _check_arguments(args[len(command) :], command, commands[" ".join(command)], definition)
    return args


def _supported(commands: Mapping[str, Any]) -> str:
    names = sorted(" ".join(c) for c in ALLOWED if " ".join(c) in commands)
    return ", ".join(names)


def _command(args: list[str], commands: Mapping[str, Any], version: str) -> tuple[str, ...]:
    """The command path at the start of ``args``: allowed by MWAA and defined by Airflow."""
    one, two = tuple(args[:1]), tuple(args[:2])
    command = one if " ".join(one) in commands or one in ALLOWED else two
    shown = " ".join(a for a in command if not a.startswith("-"))
    if command not in ALLOWED:
        subcommands = sorted(" ".join(c) for c in ALLOWED if c[:1] == one and len(c) > 1)
        if len(args) == 1 and subcommands:
            raise CommandRefused(
                f"airflow {args[0]} needs a command: "
                + ", ".join(s for s in subcommands if s in commands)
                + "."
            )
        raise CommandRefused(
            f"airflow {shown} is not supported on this environment, as on Amazon MWAA. "
            f"Supported commands: {_supported(commands)}."
        )
    if " ".join(command) not in commands:
        raise CommandRefused(
            f"airflow {shown} does not exist in Airflow {version} (Amazon MWAA supports it "
            f"for other Airflow versions). Supported commands: {_supported(commands)}."
        )
    entry = commands[" ".join(command)]
    for positional in entry.get("positionals", ()):
        if _names_a_file(positional):
            raise CommandRefused(
                f"airflow {shown} is not supported on this environment: its argument "
                f"{positional.get('metavar') or positional.get('dest')} is a path on the host."
            )
    return command


def _names_a_file(item: Mapping[str, Any]) -> bool:
    """The safety rule: an argument that names a file, path, folder or directory is one
    that reads or writes the host's files, whatever Airflow calls it."""
    words = [*item.get("flags", ()), item.get("dest"), item.get("metavar")]
    return any(isinstance(w, str) and _FILE_WORDS.search(w) for w in words)


def _check_arguments(
    args: list[str],
    command: tuple[str, ...],
    entry: Mapping[str, Any],
    definition: Mapping[str, Any],
) -> None:
    """Refuse the first argument that is not an exactly spelled, allowed option."""
    _Checker(command, entry, definition).check(args)


class _Checker:
    """One command's options, and argparse's reading of arguments against them."""

    def __init__(
        self, command: tuple[str, ...], entry: Mapping[str, Any], definition: Mapping[str, Any]
    ) -> None:
        self.command = command
        self.name = "airflow " + " ".join(command)
        self.version = str(definition.get("airflow_version") or "")
        self.options: dict[str, Mapping[str, Any]] = {}
        for option in entry.get("options", ()):
            for flag in option.get("flags", ()):
                self.options[flag] = option
        self.numbers_are_values = not entry.get("negative_number_options", False)
        self.fromfile = str(definition.get("fromfile_prefix_chars") or "")

    def check(self, args: list[str]) -> None:
        needs_value: str | None = None  # the option whose value must be the next argument
        for arg in args:
            if self.fromfile and arg[:1] in self.fromfile:
                raise CommandRefused(f"Argument {arg} would make Airflow read a file of the host.")
            if needs_value is not None:
                if arg == "--" or self.option_like(arg):
                    raise CommandRefused(
                        f"Option {needs_value} of {self.name} needs a value; a value that "
                        f"starts with '-' is written {needs_value}={arg}."
                    )
                needs_value = None
            elif arg == "--":
                return  # the rest are positional arguments, as argparse reads them
            elif self.option_like(arg):
                needs_value = self.check_option(arg)
        if needs_value is not None:
            raise CommandRefused(f"Option {needs_value} of {self.name} needs a value.")

    def option_like(self, arg: str) -> bool:
        """What argparse takes for an option (stricter: any ``-x...`` but a number)."""
        if len(arg) < 2 or not arg.startswith("-"):
            return False
        return not (self.numbers_are_values and _NEGATIVE_NUMBER.match(arg))

    def check_option(self, arg: str) -> str | None:
        """Refuse ``arg`` unless allowed; the option whose value is the next argument."""
        if arg in self.options:
            option = self.allowed(arg, self.options[arg])
            return arg if _requires_value(option) else None
        flag, eq, _ = arg.partition("=")
        if eq and flag in self.options:
            if not self.allowed(flag, self.options[flag]).get("takes_value"):
                raise CommandRefused(f"Option {flag} of {self.name} takes no value.")
            return None
        if arg.startswith("--") or any(f.startswith(flag) for f in self.options):
            raise self.unknown(flag)
        return self.check_cluster(arg)

    def check_cluster(self, arg: str) -> str | None:
        """Short options written together (``-yv``, ``-ojson``), read as argparse reads
        them: flags one by one until one that takes a value, which takes the rest."""
        for position in range(1, len(arg)):
            flag = "-" + arg[position]
            option = self.options.get(flag)
            if option is None:
                raise self.unknown(flag, arg)
            self.allowed(flag, option)
            if option.get("takes_value"):
                rest = arg[position + 1 :]
                return flag if not rest and _requires_value(option) else None
        return None

    def allowed(self, flag: str, option: Mapping[str, Any]) -> Mapping[str, Any]:
        """``option``, unless the deny-list or the safety rule refuses it."""
        flags = list(option.get("flags", ()))
        reason = next((REFUSED_OPTIONS[f] for f in flags if f in REFUSED_OPTIONS), None)
        if reason is None and _names_a_file(option):
            reason = "it names a file or folder on the host"
        if reason:
            raise CommandRefused(
                f"Option {flag} of {self.name} is not supported on this environment: {reason}."
            )
        return option

    def unknown(self, flag: str, arg: str = "") -> CommandRefused:
        near = [f for f in sorted(self.options) if len(flag) > 2 and f.startswith(flag)]
        if arg and arg != flag:
            flag = f"{flag} (in {arg})"
        if near:
            return CommandRefused(
                f"Option {flag} of {self.name} is an abbreviation; options must be written "
                f"in full ({' or '.join(near)})."
            )
        return CommandRefused(
            f"{flag} is not an option of {self.name} in Airflow {self.version} "
            f"(see '{' '.join(self.command)} --help'). A value that starts with '-' goes "
            "after '--', or is written --option=-value."
        )


def _requires_value(option: Mapping[str, Any]) -> bool:
    """An option whose value(s) must follow it (argparse nargs None, N >= 1, '+', ...);
    '?' and '*' may stand alone."""
    nargs = option.get("nargs")
    return bool(option.get("takes_value")) and nargs not in ("?", "*")
