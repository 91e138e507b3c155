"""Workers on other hosts: what they fetch, what they report, how many they run.

``openmwaa worker`` on another machine asks for an environment's bundle (its
Airflow version, requirements, settings and folders), then reports its
workers every few seconds. Each report is answered with the number of
workers the host should run: the autoscaler fills hosts that joined (in the
order they joined, each up to the limit it declared) before the control
plane's own host, which runs the rest. A host that stops reporting is
forgotten after ``HOST_TIMEOUT``; Airflow retries the tasks it was running.

Tasks on those hosts reach the environment's Airflow execution API through the
control plane (``relay_target``), with the environment's relay secret in the URL
besides their own token: a token taken from one environment's broker messages is no
use without that environment's secret, which only its worker hosts receive.
"""

from __future__ import annotations

import base64
import hmac
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from openmwaa.runtime import bundles
from openmwaa.runtime.base import Backend, WorkerBundle
from openmwaa.service.environments import Environments
from openmwaa.service.errors import (
    ResourceNotFoundException,
    ServiceUnavailableException,
    ValidationException,
)
from openmwaa.service.identity import Caller
from openmwaa.store.status import JOINABLE

ACTION = "RunWorkers"
"""``airflow:RunWorkers`` on the environment's ARN lets a key run its workers elsewhere."""
HOST_TIMEOUT = 15.0
"""A host silent for this long is gone (it reports every ``REPORT_INTERVAL``)."""
REPORT_INTERVAL = 2.0
MAX_HOST_WORKERS = 25
"""MWAA's MaxWorkers cap: no host is asked for more."""


class RelayRefused(Exception):
    """A relayed call without the environment's relay secret, or for no such environment:
    the caller is told the same in both cases."""


@dataclass
class RemoteHost:
    host: str
    limit: int
    workers: int
    busy: int
    joined: float
    seen: float
    assigned: int = 0


class WorkerHosts:
    def __init__(
        self, backend: Backend, environments: Environments, *, timeout: float = HOST_TIMEOUT
    ) -> None:
        self._backend = backend
        self._envs = environments
        self._timeout = timeout
        self._hosts: dict[str, dict[str, RemoteHost]] = {}
        self._relay_secrets: dict[str, tuple[datetime, str]] = {}
        """Each environment's relay secret as last seen in its bundle (keyed by its creation
        time too), so remote tasks still get a 503 they retry, not a 403, while it restarts."""
        self._lock = threading.Lock()

    # -- what a worker host asks -----------------------------------------------------------

    def _bundle(self, caller: Caller, name: str) -> WorkerBundle:
        caller.authorize(ACTION, self._envs.arn(name))
        row = self._envs.row(name)
        if row.status not in JOINABLE or row.applied is None:
            raise ValidationException(
                f"Environment {name} is {row.status}: workers join it once it is AVAILABLE."
            )
        bundle = self._backend.worker_bundle(self._envs.spec_of(name, row.applied))
        if bundle is None:
            raise ValidationException(
                f"Environment {name} runs no Celery workers: workers on other hosts need a "
                "server started with --airflow-database-url and --broker-url."
            )
        return bundle

    def bundle(self, caller: Caller, name: str) -> dict[str, Any]:
        """The settings a worker host runs the environment's workers with."""
        bundle = self._bundle(caller, name)
        script = bundle.startup_script
        env = dict(bundle.env)
        return {
            "Name": name,
            "AirflowVersion": bundle.airflow_version,
            "Requirements": bundle.requirements,
            "Environment": env,
            "RelaySecret": env.pop(bundles.RELAY_SECRET, None),
            "Queue": bundle.queue,
            "Concurrency": bundle.concurrency,
            "StartupScript": base64.b64encode(script).decode() if script is not None else None,
            "Fingerprint": bundle.fingerprint,
            "FilesDigest": bundles.digest(bundle.folders),
        }

    def files(self, caller: Caller, name: str) -> bytes:
        """The environment's DAG and plugin folders as one tar.gz."""
        return bundles.pack(self._bundle(caller, name).folders)

    def report(
        self, caller: Caller, name: str, host: str, limit: int, workers: int, busy: int
    ) -> dict[str, Any]:
        """Record a host's workers; answer how many it should run and what to refresh."""
        bundle = self._bundle(caller, name)
        if not host or len(host) > 64 or not all(c.isalnum() or c in "-_." for c in host):
            raise ValidationException(
                f"Host must be 1-64 letters, digits, '-', '_' or '.' (got {host!r})."
            )
        now = time.monotonic()
        with self._lock:
            hosts = self._hosts.setdefault(name, {})
            entry = hosts.get(host)
            if entry is None:
                entry = hosts[host] = RemoteHost(host, 0, 0, 0, joined=now, seen=now)
            entry.limit = max(0, min(limit, MAX_HOST_WORKERS))
            # A host runs at most its own --max-workers: a larger count (a bug, or a key
            # holder lying) must not make the autoscaler give up this host's workers.
            entry.workers = min(workers, entry.limit)
            entry.busy = min(busy, entry.workers)
            entry.seen = now
            assigned = min(entry.assigned, entry.limit)
        return {
            "DesiredWorkers": assigned,
            "Fingerprint": bundle.fingerprint,
            "FilesDigest": bundles.digest(bundle.folders),
            "ReportInterval": REPORT_INTERVAL,
        }

    def relay_target(self, name: str, secret: str) -> str:
        """Where the environment's Airflow execution API listens (on this host), for a
        caller holding the environment's relay secret.

        Raises RelayRefused for a wrong secret and for an unknown environment alike, and
        ServiceUnavailableException (right secret) while Airflow is not running.
        """
        try:
            row = self._envs.row(name)
        except ResourceNotFoundException:
            raise RelayRefused(name) from None
        spec = self._envs.spec_of(name, row.applied or row.spec)
        bundle = self._backend.worker_bundle(spec)
        expected = bundle.env.get(bundles.RELAY_SECRET) if bundle is not None else None
        with self._lock:
            if expected is not None:
                self._relay_secrets[name] = (row.created_at, expected)
            else:
                created, expected = self._relay_secrets.get(name, (None, None))
                if created != row.created_at:
                    expected = None
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            raise RelayRefused(name)
        url = self._backend.webserver_url(spec)
        if url is None:
            raise ServiceUnavailableException(f"Environment {name} is not running.")
        return url + "/execution/"

    # -- what the autoscaler asks ----------------------------------------------------------

    def live(self, name: str) -> list[RemoteHost]:
        """Hosts of ``name`` heard from lately, in the order they joined."""
        now = time.monotonic()
        with self._lock:
            hosts = self._hosts.get(name, {})
            for host in [h for h, e in hosts.items() if now - e.seen > self._timeout]:
                del hosts[host]
            return sorted(hosts.values(), key=lambda e: e.joined)

    def assign(self, name: str, target: int, local_workers: int) -> int:
        """Share ``target`` workers out: joined hosts first, each up to its limit.

        Returns the count for the control plane's own host. Its workers are only
        given up once the hosts taking over run theirs, so moving work to a host
        that is still starting never leaves the environment without workers.
        """
        hosts = self.live(name)
        remote_assigned = remote_up = 0
        left = target
        with self._lock:
            for entry in hosts:
                entry.assigned = min(left, entry.limit)
                left -= entry.assigned
                remote_assigned += entry.assigned
                remote_up += min(entry.workers, entry.assigned)
        return max(target - remote_assigned, min(local_workers, target - remote_up))

    def forget(self, name: str) -> None:
        with self._lock:
            self._hosts.pop(name, None)
            self._relay_secrets.pop(name, None)
