"""``openmwaa worker``: Celery workers of one environment, on a host of their own.

The agent asks the control plane for the environment's bundle (Airflow
version, requirements, settings with the broker and database addresses,
startup script), builds the same Airflow install locally, keeps a copy of
the DAG and plugin folders, and then reports its workers every few seconds.
Each answer says how many workers this host should run; the agent starts
them, or stops idle ones by warm shutdown, with the same worker pool and
supervisor the control plane uses for its own workers. Tasks reach Airflow's
execution API through the control plane's API port, at a URL holding the
environment's relay secret from the bundle.

The bundle carries credentials (the broker's and the database's, the relay
secret), so the agent talks plain HTTP only to a loopback address, or when told
``--insecure``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from openmwaa.api.workers import PREFIX
from openmwaa.core.loops import PeriodicLoop
from openmwaa.runtime import bundles, installs
from openmwaa.runtime.base import Interrupted
from openmwaa.runtime.celery import WORKER_PREFIX
from openmwaa.runtime.installs import ensure_install
from openmwaa.runtime.ports import PortRegistry
from openmwaa.runtime.startup import run_startup_script
from openmwaa.runtime.supervisor import (
    MARKER,
    Supervisor,
    inherited_env,
    marked_processes,
    terminate,
)
from openmwaa.runtime.workers import DRAIN_GRACE, WorkerPool, WorkerTemplate

log = logging.getLogger(__name__)

SIGNING_NAME = "airflow"
REPORT_INTERVAL = 2.0
RETRY_MAX = 30.0
"""While the control plane cannot be reached, reports back off up to this many seconds
(workers keep running their tasks meanwhile)."""


class InsecureServer(ValueError):
    """A server URL ``openmwaa worker`` will not send its credentials to, and why."""


def check_server_url(url: str, *, insecure: bool = False) -> None:
    """Refuse a server URL that would expose the bundle's credentials on the network:
    ``https://`` always passes, ``http://`` only to a loopback address or with ``insecure``."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme != "http" or not parts.hostname:
        raise InsecureServer(f"--server must be an https:// (or http://) URL, not {url!r}.")
    if insecure or _loopback(parts.hostname):
        return
    raise InsecureServer(
        f"refusing plain http:// to {parts.hostname}, which is not this host: the bundle "
        "carries the environment's broker and database credentials and its relay secret, "
        "readable by anyone on the way. Serve the control plane over TLS (an https:// URL, "
        "e.g. through a reverse proxy) or, on a network you trust, pass --insecure."
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ControlPlaneError(Exception):
    """The control plane refused a call: ``code`` is the AWS error name."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ControlPlane:
    """SigV4-signed calls to the worker routes of an openmwaa server."""

    def __init__(self, server: str, key_id: str, secret: str, region: str) -> None:
        self.base = server.rstrip("/")
        self._signer = SigV4Auth(Credentials(key_id, secret), SIGNING_NAME, region)
        self._http = httpx.Client(timeout=60.0, trust_env=False)

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> httpx.Response:
        url = f"{self.base}{PREFIX}{path}"
        body = json.dumps(payload).encode() if payload is not None else b""
        headers = {"content-type": "application/json"} if payload is not None else {}
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        self._signer.add_auth(request)
        response = self._http.request(method, url, content=body, headers=dict(request.headers))
        if response.status_code >= 400:
            try:
                error = response.json()
            except ValueError:
                error = {}
            code = response.headers.get("x-amzn-errortype") or f"HTTP {response.status_code}"
            message = error.get("Message") or error.get("message") or response.text[:200]
            raise ControlPlaneError(code, message, response.status_code)
        return response


@dataclass
class _Running:
    fingerprint: str
    files_digest: str


class WorkerAgent:
    def __init__(
        self,
        control_plane: ControlPlane,
        environment: str,
        host: str,
        limit: int,
        data_dir: Path,
        progress: Callable[[str], None],
    ) -> None:
        self.cp = control_plane
        self.environment = environment
        self.host = host
        self.limit = limit
        self.data_dir = data_dir
        self.dir = data_dir / "workers" / environment
        self.home = self.dir / "airflow"
        self.progress = progress
        self.supervisor = Supervisor()
        self.pool = WorkerPool(self.supervisor)
        self.ports = PortRegistry(data_dir)
        self.current: _Running | None = None
        self.hurry = threading.Event()
        """Set to stop at once: workers get SIGTERM and their tasks end (Airflow retries them)."""
        self._desired = -1
        self.loop = PeriodicLoop(
            f"worker-agent:{environment}", self.tick, REPORT_INTERVAL, max_backoff=RETRY_MAX
        )

    # -- preparing ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Fetch the bundle, build the install, copy the folders, configure new workers.

        Workers of an older configuration are stopped by warm shutdown: they finish
        their tasks while the new ones start.
        """
        self.progress(f"fetching the bundle of {self.environment}")
        bundle = self.cp.call("GET", f"{self.environment}/bundle").json()
        version = bundle["AirflowVersion"]
        install = ensure_install(self.data_dir, version, bundle["Requirements"], self.progress)
        self.sync_files()
        env = self._env(install, bundle)
        script = bundle.get("StartupScript")
        if script:
            env = self._run_startup_script(base64.b64decode(script), env)
        template = WorkerTemplate(
            airflow=str(install / "bin" / "airflow"),
            env=env,
            cwd=self.home,
            log_dir=self.dir / "logs",
            run_dir=self.dir / "run",
            queue=bundle["Queue"],
            concurrency=int(bundle["Concurrency"]),
            hostname=f"{self.environment}-{self.host}",
            fingerprint=bundle["Fingerprint"],
            log_port=lambda worker, replace_busy: self.ports.named_port(
                self.environment, worker, replace_busy=replace_busy
            ),
        )
        if self.current is not None:
            self.drain_all()
        self.pool.configure(self.environment, template)
        self.current = _Running(bundle["Fingerprint"], bundle["FilesDigest"])
        log.info("%s: Airflow %s ready for up to %d workers", self.environment, version, self.limit)

    def sync_files(self) -> None:
        bundles.unpack(self.cp.call("GET", f"{self.environment}/files").content, self.home)

    def _env(self, install: Path, bundle: dict[str, Any]) -> dict[str, str]:
        env = inherited_env()
        env.update(bundle["Environment"])
        for sub in ("dags", "plugins", "logs"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        env.update(
            {
                "PATH": f"{install / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
                "PYTHONUNBUFFERED": "1",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.home / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
                    f"{self.cp.base}{PREFIX}{self.environment}/execution/{bundle['RelaySecret']}/"
                ),
                MARKER: str(self.dir),
            }
        )
        return env

    def _run_startup_script(self, script: bytes, env: dict[str, str]) -> dict[str, str]:
        self.progress("running the startup script")
        path = self.dir / "startup.sh"
        path.write_bytes(script)
        path.chmod(0o700)
        exports = run_startup_script(
            path,
            {**env, "MWAA_AIRFLOW_COMPONENT": "worker"},
            cwd=self.dir,
            log_path=self.dir / "logs" / "startup-worker.log",
            protected=(set(env) - {"PATH"}) | {"MWAA_AIRFLOW_COMPONENT"},
        )
        return {**env, **exports}

    # -- running -----------------------------------------------------------------------------

    def report(self) -> int:
        """Tell the control plane what runs here; returns how many workers to run."""
        workers, busy = self.pool.counts(self.environment)
        answer = self.cp.call(
            "POST",
            f"{self.environment}/report",
            {"Host": self.host, "Limit": self.limit, "Workers": workers, "Busy": busy},
        ).json()
        assert self.current is not None
        if answer["Fingerprint"] != self.current.fingerprint:
            log.info("%s: the configuration changed; restarting workers", self.environment)
            self.prepare()
        elif answer["FilesDigest"] != self.current.files_digest:
            self.sync_files()
            self.current.files_digest = answer["FilesDigest"]
        return min(int(answer["DesiredWorkers"]), self.limit)

    def tick(self) -> None:
        """One report: prepare if needed, tell what runs here, scale to the answer.

        Raises when the control plane cannot be reached (the loop retries with backoff).
        """
        try:
            if self.current is None:
                self.prepare()
            wanted = self.report()
        except ControlPlaneError as exc:
            if not _gone(exc) or self.current is None:
                raise
            log.warning("%s was deleted: stopping its workers", self.environment)
            self.drain_all()
            self.pool.configure(self.environment, None)
            self.current, self._desired = None, -1
            return
        except Interrupted:
            return  # the agent is stopping
        if wanted != self._desired:
            log.info("%s: %d workers wanted on this host", self.environment, wanted)
            self._desired = wanted
        self.pool.scale(self.environment, wanted)

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then stop the workers by warm shutdown."""
        leftovers = marked_processes(self.dir)
        if leftovers:
            log.warning("stopping %d processes an earlier agent left running", len(leftovers))
            terminate(leftovers)
        for stale in (self.dir / "run").glob("*.json"):
            stale.unlink(missing_ok=True)
        self._desired = -1
        self.loop.start()
        try:
            stop.wait()
        finally:
            installs.cancel_all()  # an install or startup script in progress ends now
            self.loop.stop(timeout=30.0)
            self.drain_all()
            if self.supervisor.components(self.environment):
                self.progress("waiting for running tasks to finish (interrupt again to stop now)")
            self.wait_drained(DRAIN_GRACE)
            self.supervisor.stop_all(grace=5.0)

    def drain_all(self) -> None:
        for name in list(self.supervisor.components(self.environment)):
            if name.startswith(WORKER_PREFIX):
                self.supervisor.drain(self.environment, name, DRAIN_GRACE)

    def wait_drained(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.supervisor.components(self.environment) and time.monotonic() < deadline:
            if self.hurry.wait(0.5):
                return


def _gone(exc: Exception) -> bool:
    return isinstance(exc, ControlPlaneError) and exc.code == "ResourceNotFoundException"
