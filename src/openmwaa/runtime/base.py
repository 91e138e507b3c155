"""The contract between the domain and the places Airflow runs.

The reconciler (service/) drives a backend through this interface only, so a
second backend (Kubernetes) fits without touching the domain. Every method is
called from a reconciler worker thread, never from the API's event loop, and
may block; each must be idempotent, because after a control-plane restart the
reconciler repeats whatever step it was in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Progress = Callable[[str], None]
"""Receives one human line per step of long work ("installing Airflow 3.3.2")."""


@dataclass(frozen=True)
class EnvironmentSpec:
    """Everything a backend needs to run one environment, already validated."""

    name: str
    arn: str
    airflow_version: str
    environment_class: str
    tasks_per_worker: int
    min_workers: int
    max_workers: int
    schedulers: int
    min_webservers: int
    max_webservers: int
    source_bucket: str
    """The bucket's name (from SourceBucketArn)."""
    dag_s3_path: str
    plugins_s3_path: str | None = None
    plugins_s3_object_version: str | None = None
    requirements_s3_path: str | None = None
    requirements_s3_object_version: str | None = None
    startup_script_s3_path: str | None = None
    startup_script_s3_object_version: str | None = None
    airflow_configuration_options: Mapping[str, str] = field(default_factory=dict)
    webserver_access_mode: str = "PRIVATE_ONLY"
    logging: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    celery_queue: str = ""
    """The environment's own broker queue (the last part of its CeleryExecutorQueue ARN)."""
    endpoint_url: str | None = None
    """URL of the environment's endpoint (``http://HOST:PORT``), through which users reach
    its UI and API; Airflow's ``[api] base_url`` when set, so links go through it."""
    execution_role_arn: str | None = None
    """The role the environment acts with in AWS (its bucket reads, its tasks' credentials),
    when the server has AWS credentials of its own (runtime/roles.py)."""


@dataclass(frozen=True)
class Health:
    """What a backend observed of a running environment."""

    healthy: bool
    detail: str = ""
    """Why not healthy, in words a user can act on (empty when healthy)."""
    components: Mapping[str, str] = field(default_factory=dict)
    """Component name -> state ("healthy", "starting", "down", ...)."""


@dataclass(frozen=True)
class WorkerLoad:
    """What an autoscaling decision reads: Airflow's own task counts and the workers."""

    queued: int
    """Task instances in state queued: sent to the broker, not yet started."""
    running: int
    workers: int
    """Workers running now (draining ones excluded), on every host."""
    busy_workers: int = 0
    """Workers with at least one running task (never chosen for scale-in)."""

    def needed(self, tasks_per_worker: int) -> int:
        """KEDA's formula: ceil((queued + running) / tasks per worker)."""
        return math.ceil((self.queued + self.running) / max(1, tasks_per_worker))


@dataclass(frozen=True)
class WorkerBundle:
    """What Celery workers of an environment on another host run from (``openmwaa worker``)."""

    airflow_version: str
    requirements: str | None
    env: Mapping[str, str]
    """Airflow settings every worker needs (executor, broker, result backend, queue, keys),
    free of this host's paths, ports and the secrets only the API server uses."""
    queue: str
    concurrency: int
    startup_script: bytes | None
    fingerprint: str
    """Changes whenever workers must restart to run with a new configuration."""
    folders: Mapping[str, Path]
    """``dags`` and ``plugins``: the folders a worker host keeps a copy of."""


@dataclass(frozen=True)
class AirflowCli:
    """How to run the Airflow CLI of an environment (``POST /aws_mwaa/cli``)."""

    argv: tuple[str, ...]
    """The command before Airflow's arguments (the install's ``airflow``; later, as the
    environment's OS user)."""
    env: Mapping[str, str]
    cwd: Path | None
    definition: Mapping[str, Any]
    """Airflow's own CLI definition of that install (runtime/airflow_cli.py): which
    commands and options exist, so the allow-list is exact for the version."""


class RuntimeFailure(Exception):
    """A step failed for a reason the user can fix; becomes LastUpdate.Error.

    ``code`` is an MWAA-style error code (e.g. ``INCORRECT_REQUIREMENTS``),
    ``str(self)`` the useful line of the failure.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """The control plane is stopping: the step was abandoned, not failed.

    The reconciler leaves the environment's status as it was (CREATING, UPDATING, ...)
    so that the next start resumes the step; it never becomes CREATE_FAILED for this.
    """


class Backend(Protocol):
    """Where environments run. The local backend is the embedded default."""

    def supported_versions(self) -> list[str]:
        """Airflow versions this backend can run, newest first."""
        ...

    def provision(self, spec: EnvironmentSpec, progress: Progress) -> None:
        """Prepare everything the environment needs (install, database, folders)."""
        ...

    def start(self, spec: EnvironmentSpec, progress: Progress) -> None:
        """Make the environment's components run; no-op for those already running."""
        ...

    def apply(self, old: EnvironmentSpec, new: EnvironmentSpec, progress: Progress) -> None:
        """Move a running environment from ``old`` to ``new``, restarting what changed."""
        ...

    def health(self, spec: EnvironmentSpec) -> Health:
        """Cheap check of a started environment; called every few seconds."""
        ...

    def webserver_url(self, spec: EnvironmentSpec) -> str | None:
        """Base URL of the environment's Airflow API server, once started."""
        ...

    def airflow_api(
        self, spec: EnvironmentSpec, role: str, *, fresh: bool = False
    ) -> tuple[str, str]:
        """(base URL, bearer token) for calling the environment's Airflow REST API as
        a user with ``role`` (Admin, Op, User, Viewer or Public); ``fresh``: a new token,
        not a cached one (Airflow refused the last)."""
        ...

    def airflow_cli(self, spec: EnvironmentSpec) -> AirflowCli:
        """How to run the Airflow CLI of a started environment; RuntimeFailure if it cannot."""
        ...

    def isolation_problems(self) -> list[str]:
        """What leaves environments not isolated from each other or from the server (no
        users of their own, no resource limits), in words; empty when nothing does."""
        ...

    def worker_load(self, spec: EnvironmentSpec) -> WorkerLoad | None:
        """Task counts and workers of a started environment; None when it has no
        autoscaled workers (LocalExecutor). Called every second or so."""
        ...

    def set_workers(self, spec: EnvironmentSpec, count: int) -> None:
        """Start or warm-stop workers towards ``count``; never stops one running a task."""
        ...

    def worker_bundle(self, spec: EnvironmentSpec) -> WorkerBundle | None:
        """What workers on other hosts need; None unless the environment runs Celery
        workers and is started."""
        ...

    def destroy(self, spec: EnvironmentSpec, progress: Progress) -> None:
        """Stop every process and remove the environment's data. Idempotent."""
        ...

    def shutdown(self) -> None:
        """The control plane is stopping: release what the backend holds in-process."""
        ...
