"""What the local backend's modules share: its settings, helpers and per-environment memory."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from openmwaa.buckets import BucketStore
from openmwaa.buckets.sync import DagMirror
from openmwaa.runtime.base import EnvironmentSpec, Interrupted, WorkerBundle
from openmwaa.runtime.brokers import BrokerAccounts
from openmwaa.runtime.local.layout import Layout
from openmwaa.runtime.ports import PortRegistry
from openmwaa.runtime.supervisor import Supervisor
from openmwaa.runtime.tenancy import SERVER, Tenant
from openmwaa.runtime.tenancy.registry import Tenancy
from openmwaa.runtime.workers import WorkerPool


@dataclass
class EnvMemory:
    """What the backend holds in memory for one environment.

    Two locks, so that nothing quick waits behind something slow: ``lock`` is held by
    the lifecycle steps (provision, start, apply, destroy), which may take minutes (a uv
    install); ``tokens_lock`` only guards the token cache, so token fetches for
    InvokeRestApi and web logins never wait for a step to finish.
    """

    lock: threading.RLock = field(default_factory=threading.RLock)
    tokens_lock: threading.Lock = field(default_factory=threading.Lock)
    mirror: DagMirror | None = None
    fingerprint: str | None = None
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    bundle: WorkerBundle | None = None
    """What workers on other hosts run from, once the environment runs Celery workers."""

    def forget_tokens(self) -> None:
        with self.tokens_lock:
            self.tokens.clear()


class ExecutionRoles(Protocol):
    """An environment's ExecutionRoleArn in effect: the bucket read with that role, and
    the variables that let its processes fetch the role's credentials."""

    def store_for(self, spec: EnvironmentSpec, default: BucketStore) -> BucketStore: ...

    def environment(self, spec: EnvironmentSpec) -> Mapping[str, str]: ...


@dataclass
class Context:
    """Settings and shared helpers of one LocalBackend."""

    data_dir: Path
    store: BucketStore
    airflow_database_url: str | None
    broker_url: str | None
    """Production mode (CeleryExecutor) when set; LocalExecutor otherwise."""
    ports: PortRegistry
    http: httpx.Client
    supervisor: Supervisor
    workers: WorkerPool
    brokers: BrokerAccounts | None = None
    """Makes each environment's own broker account (None: environments use broker_url)."""
    environments: Path | None = None
    """Where environments' folders really are (``<data-dir>/environments`` resolved: an
    environment's user cannot pass through a data dir under a closed folder)."""
    tenancy: Tenancy | None = None
    """Users and cgroups of the environments (None: every environment runs as the server)."""
    roles: ExecutionRoles | None = None
    """Execution roles in effect (None: the server has no AWS credentials of its own)."""
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set by shutdown(): steps in flight give up (Interrupted) at their next check."""
    _envs: dict[str, EnvMemory] = field(default_factory=dict)
    _envs_lock: threading.Lock = field(default_factory=threading.Lock)

    def env(self, name: str) -> EnvMemory:
        with self._envs_lock:
            return self._envs.setdefault(name, EnvMemory())

    def known_env(self, name: str) -> EnvMemory | None:
        with self._envs_lock:
            return self._envs.get(name)

    def env_names(self) -> list[str]:
        with self._envs_lock:
            return list(self._envs)

    def forget_env(self, name: str) -> None:
        with self._envs_lock:
            self._envs.pop(name, None)

    def store_for(self, spec: EnvironmentSpec) -> BucketStore:
        """The bucket store as the environment's execution role sees it."""
        return self.roles.store_for(spec, self.store) if self.roles else self.store

    def role_env(self, spec: EnvironmentSpec) -> dict[str, str]:
        """What the environment's processes need to act with its execution role."""
        return dict(self.roles.environment(spec)) if self.roles else {}

    def tenant(self, name: str) -> Tenant:
        """Who the environment's processes run as, inside which cgroups."""
        return self.tenancy.tenant(name) if self.tenancy else SERVER

    def layout(self, name: str) -> Layout:
        if self.environments is not None:
            return Layout(self.environments / name)
        return Layout.of(self.data_dir, name)

    @property
    def admin_url(self) -> str:
        """The PostgreSQL admin URL (only called in PostgreSQL mode)."""
        assert self.airflow_database_url is not None
        return self.airflow_database_url

    def check_stopping(self) -> None:
        """Raise Interrupted once the control plane is stopping (between steps)."""
        if self.stopping.is_set():
            raise Interrupted("the control plane is stopping")
