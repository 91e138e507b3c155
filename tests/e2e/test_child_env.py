"""Nothing of the server's own environment reaches what it starts for a user.

``openmwaa serve`` runs with AWS credentials (its own key on a moto server standing in
for AWS, so the environment's execution role is assumed for real) and an ``OPENMWAA_*``
secret in its environment (random). An environment is created whose requirements.txt
installs a local setup.py package (its build step, run by uv, writes its
environment to a file), whose startup script prints its environment, and whose
DAG's task prints its environment to its log. None of those outputs may contain
any of the secret values, and each must exist (so the test can fail).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_roles_support import FakeAws, start_moto
from live_server import NETWORK, Server, wait_for, wait_status

NAME = "childenv"
BUCKET = "child-env"
TIMEOUT = 900

DAG = """
import json, os
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.python import PythonOperator

def dump():
    print("ENVDUMP " + json.dumps(dict(os.environ), sort_keys=True))

with DAG("envdump", schedule="@once", start_date=pendulum.datetime(2024, 1, 1),
         is_paused_upon_creation=False, catchup=False):
    PythonOperator(task_id="dump", python_callable=dump)
"""

SETUP_PY = """
import json, os
from setuptools import setup

with open({out!r}, "a") as fh:
    fh.write("BUILDENV " + json.dumps(dict(os.environ), sort_keys=True) + "\\n")
setup(name="envprobe", version="0.1", py_modules=[])
"""

STARTUP = "#!/bin/bash\necho STARTUPENV; env\nexport PROBE_FROM_STARTUP=1\n"


ALLOWED_AWS = {
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
}
"""What the environment is given on purpose: its execution role's credentials endpoint."""


@pytest.fixture(scope="module")
def aws() -> Iterator[FakeAws]:
    fake = start_moto()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def planted(aws: FakeAws) -> dict[str, str]:
    """The secrets the server is started with: its AWS key, and a random one."""
    return {
        "AWS_ACCESS_KEY_ID": aws.key_id,
        "AWS_SECRET_ACCESS_KEY": aws.secret,
        "OPENMWAA_TEST_ADMIN_SECRET": secrets.token_urlsafe(30),
    }


@pytest.fixture(scope="module")
def probe_dir() -> Iterator[Path]:
    """The requirement's source and where its build step writes: a folder the environment's
    user can reach (pytest's folders are closed to other users)."""
    folder = Path(tempfile.mkdtemp(prefix="openmwaa-probe-"))
    os.chmod(folder, 0o777)  # noqa: S103 - the build step, as the environment's user, writes here
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    planted: dict[str, str],
    aws: FakeAws,
    probe_dir: Path,
) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("child-env")
    bucket = data_dir / "buckets" / BUCKET
    (bucket / "dags").mkdir(parents=True)
    (bucket / "dags" / "envdump.py").write_text(DAG)
    probe = probe_dir / "probe"
    probe.mkdir()
    (probe / "setup.py").write_text(SETUP_PY.format(out=str(probe_dir / "build-env.txt")))
    os.chmod(probe, 0o777)  # noqa: S103 - setuptools writes its egg-info beside setup.py
    os.chmod(probe / "setup.py", 0o644)
    (bucket / "requirements.txt").write_text(f"envprobe @ {probe.as_uri()}\n")
    (bucket / "startup.sh").write_text(STARTUP)
    srv = Server(data_dir, [])
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**aws.server_env(), **planted}.items():
            mp.setenv(name, value)
        srv.start()
    yield srv
    srv.stop()
    # The install of this test's requirements is its own; do not keep gigabytes of them.
    shutil.rmtree(data_dir / "runtimes", ignore_errors=True)


def _outputs(data_dir: Path, probe_dir: Path) -> dict[str, str]:
    """Every file the environment and the build wrote, by path (text)."""
    found = {}
    roots = [data_dir / "environments" / NAME, probe_dir / "build-env.txt"]
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            if path.suffix in (".db", ".pyc") or path.stat().st_size > 20_000_000:
                continue
            found[str(path)] = path.read_text(errors="replace")
    return found


def test_no_server_secret_reaches_build_startup_script_or_task(
    server: Server, planted: dict[str, str], aws: FakeAws, probe_dir: Path
) -> None:
    mwaa: Any = server.client()
    mwaa.create_environment(
        Name=NAME,
        ExecutionRoleArn=aws.role("reader-x"),
        SourceBucketArn=f"arn:aws:s3:::{BUCKET}",
        DagS3Path="dags",
        RequirementsS3Path="requirements.txt",
        StartupScriptS3Path="startup.sh",
        NetworkConfiguration=NETWORK,
        EnvironmentClass="mw1.micro",
    )
    env = wait_status(mwaa, NAME, {"AVAILABLE", "CREATE_FAILED"}, TIMEOUT)
    assert env["Status"] == "AVAILABLE", env.get("LastUpdate")

    def task_logged() -> bool:
        return any("ENVDUMP {" in text for text in _outputs(server.data_dir, probe_dir).values())

    wait_for(task_logged, 300, "the task's environment in its log")
    outputs = _outputs(server.data_dir, probe_dir)
    build = outputs[str(probe_dir / "build-env.txt")]
    assert "BUILDENV {" in build, "the requirement's build step ran"
    startup = [t for p, t in outputs.items() if "startup-" in p and "STARTUPENV" in t]
    assert startup and "MWAA_AIRFLOW_COMPONENT" in startup[0], "the startup script ran"
    task = [t for t in outputs.values() if "ENVDUMP {" in t]
    assert task and "AIRFLOW_HOME" in task[0], "the task printed its environment"
    leaks = {
        (name, path)
        for path, text in outputs.items()
        for name, value in planted.items()
        if value in text
    }
    assert leaks == set(), f"server secrets found in children's output: {sorted(leaks)}"
    # Not only these values: no AWS_* or OPENMWAA_* variable of the server at all (the
    # task has its execution role's endpoint instead), and a home of their own (boto3 in
    # a task must not find the server user's ~/.aws).
    dumps = {
        "build": _dump(build, "BUILDENV "),
        "task": _dump(task[0], "ENVDUMP "),
    }
    for what, env in dumps.items():
        names = [
            n
            for n in env
            if n.startswith(("AWS_", "OPENMWAA_"))
            and n != "OPENMWAA_ENV_DIR"
            and not (what == "task" and n in ALLOWED_AWS)
        ]
        assert names == [], f"{what}: {names}"
    assert set(dumps["task"]) >= ALLOWED_AWS, "the task has its execution role's endpoint"
    environments = (server.data_dir / "environments").resolve()
    assert dumps["task"]["HOME"].startswith(str(environments)), dumps["task"]["HOME"]
    allowed = "|".join(f"{n.removeprefix('AWS_')}=" for n in sorted(ALLOWED_AWS))
    pattern = rf"^(AWS_(?!{allowed})|OPENMWAA_(?!ENV_DIR=|ENV_OUT=))"
    assert not re.search(pattern, startup[0], re.MULTILINE)


def _dump(text: str, prefix: str) -> dict[str, str]:
    """The environment a probe printed as ``PREFIX {json}``, from a plain line or from a
    structured (JSON) log line that carries it as its message."""
    for line in text.splitlines():
        if prefix not in line:
            continue
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                line = next(str(v) for v in record.values() if prefix in str(v))
        start = line.index(prefix) + len(prefix)
        env, _ = json.JSONDecoder().raw_decode(line[start:])
        return dict(env)
    raise AssertionError(f"no {prefix!r} line")
