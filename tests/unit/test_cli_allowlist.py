"""The ``/aws_mwaa/cli`` allow-list against the real Airflow install's own CLI definition.

Every refused form here is one Airflow's argparse would accept and act on (the last
test proves it by parsing them with Airflow's own parser): abbreviations, options that
run or write host files, short-option clusters hiding one, values smuggling options.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from openmwaa.runtime.airflow_cli import cli_definition
from openmwaa.runtime.installs import DEFAULT_VERSION, install_key
from openmwaa.service.cli_commands import CommandRefused, parse_command


@pytest.fixture(scope="module")
def install(airflow_runtimes: Path) -> Path:
    return airflow_runtimes / install_key(DEFAULT_VERSION, None)


@pytest.fixture(scope="module")
def definition(install: Path) -> dict[str, Any]:
    return cli_definition(install)


ALLOWED_FORMS = [
    ("dags list -o json", ["dags", "list", "-o", "json"]),
    ("dags list -ojson", ["dags", "list", "-ojson"]),
    ("dags list --output=json", ["dags", "list", "--output=json"]),
    ("""dags trigger x --conf '{"a":1}'""", ["dags", "trigger", "x", "--conf", '{"a":1}']),
    ("dags trigger x --conf=-1x", ["dags", "trigger", "x", "--conf=-1x"]),
    ("variables set k v", ["variables", "set", "k", "v"]),
    ("variables set k -- -v", ["variables", "set", "k", "--", "-v"]),
    ("tasks list x", ["tasks", "list", "x"]),
    ("tasks clear x -yd", ["tasks", "clear", "x", "-yd"]),
    ("tasks clear x -yds 2024-01-01", ["tasks", "clear", "x", "-yds", "2024-01-01"]),
    ("dags list-jobs --limit -1", ["dags", "list-jobs", "--limit", "-1"]),
    ("dags list -B a --bundle-name b", ["dags", "list", "-B", "a", "--bundle-name", "b"]),
    ("version", ["version"]),
    ("airflow version", ["version"]),
    ("cheat-sheet -v", ["cheat-sheet", "-v"]),
]


@pytest.mark.parametrize(("text", "args"), ALLOWED_FORMS)
def test_allowed(definition: dict[str, Any], text: str, args: list[str]) -> None:
    assert parse_command(text, definition) == args


REFUSED_FORMS = [
    # options that run or write host files, however they are spelled
    ("dags test x -f /tmp/evil.py", "runs a Python file"),
    ("dags test x --dagfile-path /tmp/evil.py", "runs a Python file"),
    ("dags test x --dagfile-path=/tmp/evil.py", "runs a Python file"),
    ("dags test x -vf /tmp/evil.py", "runs a Python file"),
    ("dags test x --save-dagrun /tmp/x.png", "writes a file"),
    ("dags test x --imgcat-dagrun", "terminal image"),
    ("dags show x --save /tmp/x.dot", "writes a file"),
    ("dags show x -s /tmp/x.dot", "writes a file"),
    ("dags show x -vs/tmp/x.dot", "writes a file"),
    ("dags show x --imgcat", "terminal image"),
    ("tasks test x t --env-vars {}", "environment variables"),
    ("tasks test x t -m", "debugger"),
    # abbreviations and unknown options (Airflow's argparse would accept --dagf and --sa)
    ("dags test x --dagf /tmp/evil.py", "abbreviation"),
    ("dags show x --sa /tmp/x.dot", "abbreviation"),
    ("dags list --out json", "abbreviation"),
    ("dags list --subdir /etc", "not an option"),
    ("dags list --subdir=/etc", "not an option"),
    ("dags list -S /etc", "not an option"),
    ("dags list -S/etc", "not an option"),
    ("dags list --sub=/etc", "not an option"),
    ("dags list --no-such-option", "not an option"),
    ("dags list -vS/etc", "not an option"),
    # --opt=value for a flag, and values that would be read as options
    ("tasks clear x -y=s", "takes no value"),
    ("dags list --local=yes", "takes no value"),
    ("dags trigger x --conf -f", "needs a value"),
    ("dags trigger x --conf", "needs a value"),
    ("dags trigger x -c -- y", "needs a value"),
    # commands MWAA does not run, or that this Airflow version lacks
    ("db migrate", "not supported"),
    ("db reset -y", "not supported"),
    ("connections list", "not supported"),
    ("connections export out.json", "not supported"),
    ("users create -u x", "not supported"),
    ("pools list", "not supported"),
    ("config get-value core fernet_key", "not supported"),
    ("api-server", "not supported"),
    ("scheduler", "not supported"),
    ("tasks run x t", "not supported"),
    ("rm -rf /", "not supported"),
    ("-h", "not supported"),
    ("dags backfill x", "does not exist in Airflow 3.3.2"),
    ("dags", "needs a command"),
    # input that is not a command
    ("", "must be an Airflow CLI command"),
    ("dags 'unclosed", "cannot be parsed"),
    ("variables set k 'a\x00b'", "NUL"),
    ("version " + "x" * 20000, "longer than"),
]


@pytest.mark.parametrize(("text", "why"), REFUSED_FORMS)
def test_refused(definition: dict[str, Any], text: str, why: str) -> None:
    with pytest.raises(CommandRefused, match=why):
        parse_command(text, definition)


def test_the_definition_is_the_installs_own(install: Path, definition: dict[str, Any]) -> None:
    """Options come from the installed version, not a hand list: ``--bundle-name`` exists
    in Airflow 3 (``--subdir`` was Airflow 2's), and a definition without it refuses it."""
    assert definition["airflow_version"] == DEFAULT_VERSION
    dags_list = definition["commands"]["dags list"]
    assert {"-B", "--bundle-name"} <= {f for o in dags_list["options"] for f in o["flags"]}
    assert parse_command("dags list -B b", definition)
    assert (install / "openmwaa-cli-v1.json").is_file()
    assert json.loads((install / "openmwaa-cli-v1.json").read_text()) == definition

    older = json.loads(json.dumps(definition))
    older["airflow_version"] = "older"
    options = older["commands"]["dags list"]["options"]
    older["commands"]["dags list"]["options"] = [o for o in options if "-B" not in o["flags"]]
    with pytest.raises(CommandRefused, match="not an option of airflow dags list in Airflow older"):
        parse_command("dags list -B b", older)


def test_a_new_file_option_is_refused_by_the_safety_rule(definition: dict[str, Any]) -> None:
    """An option no deny-list names, but whose dest or metavar is a path, is refused."""
    newer = json.loads(json.dumps(definition))
    newer["commands"]["dags list"]["options"].append(
        {
            "flags": ["--report-to"],
            "dest": "report_to",
            "metavar": "FILEPATH",
            "takes_value": True,
            "nargs": None,
        }
    )
    with pytest.raises(CommandRefused, match="names a file or folder"):
        parse_command("dags list --report-to /tmp/x", newer)


_PARSE_SCRIPT = r"""
import json, sys
from airflow.cli import cli_parser
parser = cli_parser.get_parser()
results = []
for argv in json.loads(sys.argv[1]):
    try:
        ns = parser.parse_args(argv)
        set_ = {k: v for k, v in vars(ns).items() if v not in (None, False, [])}
        results.append({k: v for k, v in set_.items() if k != "func"})
    except SystemExit:
        results.append(None)
print("RESULTS" + json.dumps(results, default=str))
"""


def test_airflow_reads_the_forms_as_checked(
    install: Path, definition: dict[str, Any], tmp_path: Path
) -> None:
    """Differential check with Airflow's own parser: every allowed form parses and sets no
    host-file option; the dangerous refused forms are ones Airflow would have acted on."""
    allowed = [args for _, args in ALLOWED_FORMS]
    dangerous = {
        "dags test x --dagf /tmp/evil.py": "dagfile_path",
        "dags test x -vf /tmp/evil.py": "dagfile_path",
        "dags show x --sa /tmp/x.dot": "save",
        "dags show x -vs/tmp/x.dot": "save",
    }
    dangerous_argv = [text.split() for text in dangerous]
    proc = subprocess.run(
        [
            str(install / "bin" / "python"),
            "-c",
            _PARSE_SCRIPT,
            json.dumps(allowed + dangerous_argv),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path), "HOME": str(tmp_path)},
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS"))
    results = json.loads(line[len("RESULTS") :])
    for args, parsed in zip(allowed, results[: len(allowed)], strict=True):
        assert parsed is not None, f"Airflow refuses {args}"
        assert not {"dagfile_path", "save", "save_dagrun", "subdir", "env_vars"} & set(parsed)
    for (text, dest), parsed in zip(dangerous.items(), results[len(allowed) :], strict=True):
        assert parsed is not None and dest in parsed, f"Airflow would not act on {text}"
        with pytest.raises(CommandRefused):
            parse_command(text, definition)
