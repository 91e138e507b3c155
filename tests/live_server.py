"""Live ``openmwaa serve`` processes and real boto3 clients for them, for tests and benches.

A module of its own (not conftest.py) so that every test folder and bench imports the
same thing, whatever order pytest loads the folders' conftest files in.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psutil
import psycopg
from botocore.config import Config

REPO = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = os.environ.get(
    "OPENMWAA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)

NETWORK = {"SubnetIds": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
REQUIRED = {
    "ExecutionRoleArn": "arn:aws:iam::123456789012:role/airflow-execution",
    "SourceBucketArn": "arn:aws:s3:::my-dags",
    "DagS3Path": "dags",
    "NetworkConfiguration": NETWORK,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One ``openmwaa serve`` process; restartable on the same data and store."""

    data_dir: Path
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    soft_open_files: int | None = None
    """Start with this soft RLIMIT_NOFILE (as a shell's ``ulimit -Sn``)."""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / "serve.log"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "openmwaa", "serve",
            "--data-dir", str(self.data_dir), "--port", str(self.port), *self.args,
        ]  # fmt: skip

    def _limits(self) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.soft_open_files or hard, hard))

    def start(self, timeout: float = 60) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        limits = self._limits if self.soft_open_files is not None else None
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=limits
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"openmwaa serve exited: {self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"openmwaa serve did not listen in {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def run_once(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``openmwaa serve`` in the foreground (one that is expected to exit)."""
        return subprocess.run(self.command(), capture_output=True, text=True, timeout=timeout)

    def credentials(self) -> dict[str, str]:
        key = json.loads((self.data_dir / "admin-key.json").read_text())
        return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}

    def client(self, key: str | None = None, secret: str | None = None, **config: Any) -> Any:
        creds = self.credentials()
        return boto3.client(
            "mwaa",
            region_name="us-east-1",
            endpoint_url=self.endpoint,
            aws_access_key_id=key or creds["key"],
            aws_secret_access_key=secret or creds["secret"],
            config=Config(inject_host_prefix=False, retries={"max_attempts": 1}, **config),
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``openmwaa ARGS`` against this server's data dir."""
        command = [sys.executable, "-m", "openmwaa", *args, "--data-dir", str(self.data_dir)]
        return subprocess.run(
            [*command, *self.args_for_store()], capture_output=True, text=True, check=check
        )

    def args_for_store(self) -> list[str]:
        if "--database-url" in self.args:
            return ["--database-url", self.args[self.args.index("--database-url") + 1]]
        return []


def wait_status(client: Any, name: str, wanted: set[str], timeout: float = 60) -> dict[str, Any]:
    """Poll GetEnvironment until the status is one of ``wanted``; return the environment."""
    deadline = time.monotonic() + timeout
    env: dict[str, Any] = {}
    while time.monotonic() < deadline:
        env = client.get_environment(Name=name)["Environment"]
        if env["Status"] in wanted:
            return env
        time.sleep(0.2)
    raise AssertionError(f"{name} stayed {env.get('Status')} (wanted {wanted})")


def postgres_database() -> str:
    """A fresh PostgreSQL database on the local server; returns its URL."""
    name = f"openmwaa_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def installs_root() -> Path:
    """Where the test runs keep their Airflow installs: keyed by the shipped constraints,
    so a rerun on the same machine reuses the install instead of building it again."""
    from openmwaa.runtime.installs import constraints_file

    key = hashlib.sha256(constraints_file("3.3.2").read_bytes()).hexdigest()[:10]
    return Path(f"/tmp/openmwaa-runtime-tests-{key}")


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def belongs_under(proc: psutil.Process, root: Path) -> bool:
    """Whether an Airflow process was started for an environment under ``root``."""
    from openmwaa.runtime.supervisor import MARKER

    # Environments of a data dir under a closed folder live elsewhere (see placement).
    roots = (str(root), str((Path(root) / "environments").resolve()))
    try:
        return proc.environ().get(MARKER, "").startswith(roots)
    except (psutil.Error, OSError):
        return False
