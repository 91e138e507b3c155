"""Airflow's own CLI definition of an install: which commands and options exist.

``POST /aws_mwaa/cli`` may pass a user's arguments to ``airflow`` only when every
option is one that the installed Airflow version really defines (see
service/cli_commands.py). A hand-written list would drift from the installed
version, so the definition is read from Airflow itself: the install's own
interpreter builds Airflow's argument parser (``airflow.cli.cli_parser.get_parser``,
the one ``airflow`` runs, with the providers' commands) and dumps it as JSON.

That costs a few seconds, so it is done once per install: the JSON is cached in
the install's folder (``openmwaa-cli-v1.json``, written atomically; installs are
immutable once ready, and a rebuilt install is a new folder) and in this process.

The format (``FORMAT``)::

    {"format": 1, "airflow_version": "3.3.2",
     "prefix_chars": "-", "fromfile_prefix_chars": null,
     "commands": {
       "dags trigger": {
         "help": "Trigger a new DAG run...",
         "allow_abbrev": true,
         "negative_number_options": false,
         "options": [{"flags": ["-c", "--conf"], "dest": "conf", "action": "_StoreAction",
                      "nargs": null, "takes_value": true, "metavar": null,
                      "choices": null, "help": "JSON string that gets pickled..."}],
         "positionals": [{"dest": "dag_id", "nargs": null, "metavar": null,
                          "choices": null, "help": "The id of the dag"}]},
       "version": {...}, ...}}

``commands`` holds every runnable command path (groups such as ``dags`` are not
runnable on their own); ``nargs`` is argparse's (null, an int, "?", "*", "+",
"..." or "A..."), ``takes_value`` is false for flags (``nargs`` 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from openmwaa.core.files import write_atomic
from openmwaa.runtime.base import RuntimeFailure
from openmwaa.runtime.installs import useful_error_line
from openmwaa.runtime.tenancy import Tenant

FORMAT = 1
CACHE_NAME = f"openmwaa-cli-v{FORMAT}.json"
TIMEOUT_SECONDS = 180.0
"""Building the parser loads every provider; slow on a busy 2-core host."""

_DUMP_SCRIPT = r"""
import argparse, json, sys

def jsonable(value):
    # Airflow's help texts are lazy proxies: json needs real str objects.
    if value is None or type(value) in (bool, int, float):
        return value
    return str(value)

def describe(parser):
    options, positionals = [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        entry = {
            "dest": jsonable(action.dest),
            "nargs": jsonable(action.nargs),
            "metavar": jsonable(action.metavar),
            "choices": (
                [jsonable(c) for c in action.choices] if action.choices is not None else None
            ),
            "help": jsonable(action.help),
        }
        if action.option_strings:
            entry["flags"] = [str(flag) for flag in action.option_strings]
            entry["action"] = type(action).__name__
            entry["takes_value"] = action.nargs != 0
            options.append(entry)
        else:
            positionals.append(entry)
    return {
        "help": jsonable(parser.description),
        "allow_abbrev": bool(parser.allow_abbrev),
        "negative_number_options": bool(parser._has_negative_number_optionals),
        "options": options,
        "positionals": positionals,
    }

def walk(parser, path, commands):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        commands[" ".join(str(p) for p in path)] = describe(parser)
        return
    for name, child in subs[0].choices.items():
        walk(child, [*path, name], commands)

from airflow import __version__
from airflow.cli import cli_parser

root = cli_parser.get_parser()
commands = {}
walk(root, [], commands)
out = {
    "format": @FORMAT@,
    "airflow_version": __version__,
    "prefix_chars": root.prefix_chars,
    "fromfile_prefix_chars": root.fromfile_prefix_chars,
    "commands": commands,
}
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    json.dump(out, fh, sort_keys=True)
""".replace("@FORMAT@", str(FORMAT))

_cache: dict[Path, dict[str, Any]] = {}
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def cli_definition(install: Path) -> dict[str, Any]:
    """Airflow's CLI definition of ``install`` (the format above); callers must not modify it.

    Cached in this process and in the install's folder; otherwise read by running the
    install's interpreter once. RuntimeFailure("AIRFLOW_CLI_UNAVAILABLE", <useful line>)
    when Airflow cannot build its parser there.
    """
    key = install.resolve()
    hit = _cache.get(key)
    if hit is not None:
        return hit
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:  # one dump per install at a time in this process; other processes may race
        hit = _cache.get(key) or _read_cached(key / CACHE_NAME)
        if hit is None:
            hit = _dump(key)
            write_atomic(key / CACHE_NAME, json.dumps(hit, sort_keys=True).encode(), 0o644)
        _cache[key] = hit
        return hit


def _read_cached(path: Path) -> dict[str, Any] | None:
    """The cached definition, or None to dump it again (a cache is never worth failing on)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not _well_formed(data):
        return None
    return data


def _well_formed(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("format") == FORMAT
        and isinstance(data.get("commands"), dict)
        and bool(data["commands"])
    )


def _dump(install: Path) -> dict[str, Any]:
    """Run the dump script with the install's interpreter, in a throw-away Airflow home
    and an environment with nothing of this server's (no credentials, no database URLs)."""
    python = install / "bin" / "python"
    if not python.exists():
        raise RuntimeFailure("AIRFLOW_CLI_UNAVAILABLE", f"{install} is not an Airflow install")
    with tempfile.TemporaryDirectory(prefix="openmwaa-cli-") as tmp:
        home = Path(tmp)
        out = home / "definition.json"
        if os.geteuid() == 0:
            os.chown(home, *NOBODY_IDS)
        env = {
            "PATH": f"{install / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "AIRFLOW_HOME": tmp,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
        }
        argv = [str(python), "-c", _DUMP_SCRIPT, str(out)]
        if os.geteuid() == 0:
            # An install may hold an environment's own packages: never run them as root.
            argv = NOBODY.wrap(argv)
        returncode, output = _run(argv, env, home)
        if returncode is None:
            raise RuntimeFailure(
                "AIRFLOW_CLI_UNAVAILABLE",
                f"reading Airflow's CLI definition in {install} took more than "
                f"{TIMEOUT_SECONDS:g} s",
            )
        if returncode != 0:
            raise RuntimeFailure(
                "AIRFLOW_CLI_UNAVAILABLE",
                "reading Airflow's CLI definition failed: " + useful_error_line(output),
            )
        try:
            data = json.loads(out.read_bytes())
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(
                "AIRFLOW_CLI_UNAVAILABLE", f"Airflow's CLI definition could not be read: {exc}"
            ) from None
    if not _well_formed(data):
        raise RuntimeFailure("AIRFLOW_CLI_UNAVAILABLE", "Airflow's CLI definition is empty")
    return data


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int | None, str]:
    """(exit code or None on timeout, output); on timeout the whole process group is
    killed, so a child that Airflow started cannot keep the pipes (and this call) open."""
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise RuntimeFailure(
            "AIRFLOW_CLI_UNAVAILABLE", f"cannot run {argv[0]}: {exc.strerror or exc}"
        ) from None
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, ""
    return proc.returncode, output.decode("utf-8", errors="replace")


NOBODY_IDS = (65534, 65534)
NOBODY = Tenant("nobody", *NOBODY_IDS)
"""Who reads an install's CLI definition when the server runs as root."""


def forget(install: Path | None = None) -> None:
    """Drop the in-process cache (of one install, or all): for tests and removed installs."""
    if install is None:
        _cache.clear()
    else:
        _cache.pop(install.resolve(), None)
