"""The components of an environment: their names, environment variables and specs.

Components (scheduler, dag-processor, triggerer, api-server, Celery workers) run
from the environment's Airflow install, never inside the control plane's
interpreter. The fingerprint of what they run with decides whether an update
restarts them and whether a successor control plane may adopt them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from openmwaa.runtime import celery
from openmwaa.runtime.base import EnvironmentSpec
from openmwaa.runtime.config import Ports, Secrets, airflow_environment
from openmwaa.runtime.local.context import Context
from openmwaa.runtime.local.state import load_broker_password
from openmwaa.runtime.supervisor import MARKER, ComponentSpec, inherited_env

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
MWAA_COMPONENT = {
    "scheduler": "scheduler",
    "dag-processor": "scheduler",
    "triggerer": "scheduler",
    "api-server": "webserver",
    "worker": "worker",
}
"""Component -> the MWAA_AIRFLOW_COMPONENT its startup-script run sees."""
MAX_WORKERS_CAP = 25
"""MWAA's upper bound of MaxWorkers: Celery environments size parallelism for it, so
a MaxWorkers change restarts nothing (the autoscaler alone enforces MaxWorkers)."""


def digest(data: bytes | str | None) -> str | None:
    if data is None:
        return None
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


@dataclass
class Prepared:
    """Everything fetched and built for a spec, before anything live is touched."""

    spec: EnvironmentSpec
    install: Path
    requirements: str | None
    plugins: bytes | None
    startup: bytes | None
    secrets: Secrets
    ports: Ports
    sql_alchemy_conn: str

    @property
    def plugins_hash(self) -> str | None:
        return digest(self.plugins)

    @property
    def startup_hash(self) -> str | None:
        return digest(self.startup)


def queue_of(spec: EnvironmentSpec) -> str:
    """The environment's broker queue (specs from before queues were named: by name)."""
    return spec.celery_queue or f"openmwaa-{spec.name}"


def broker_url_for(ctx: Context, spec: EnvironmentSpec) -> str | None:
    """The broker URL the environment's processes (and workers on other hosts) get: its
    own account's where the broker has accounts per environment; the server's (admin)
    URL never, unless the broker cannot have them (RabbitMQ without a management URL)."""
    if not ctx.broker_url:
        return None
    if ctx.brokers is None:
        return ctx.broker_url
    return ctx.brokers.url_for(queue_of(spec), load_broker_password(ctx.layout(spec.name)))


def ensure_broker_account(ctx: Context, spec: EnvironmentSpec) -> None:
    """Create the environment's broker account, or set it again as it must be: at
    provision, at every start (environments made before accounts existed get one) and
    when health finds it refused (a restarted Redis without an ACL file forgets users)."""
    if ctx.broker_url and ctx.brokers is not None:
        ctx.brokers.ensure(queue_of(spec), load_broker_password(ctx.layout(spec.name)))


def component_names(ctx: Context, spec: EnvironmentSpec) -> list[str]:
    """The environment's components: several schedulers only on PostgreSQL with Celery
    (SQLite allows one writer)."""
    schedulers = max(1, spec.schedulers) if ctx.broker_url else 1
    extra = [f"scheduler-{n}" for n in range(2, schedulers + 1)]
    return ["scheduler", *extra, *COMPONENTS[1:]]


def component_env(ctx: Context, prepared: Prepared) -> dict[str, str]:
    """The variables every component runs with (before startup-script exports)."""
    spec = prepared.spec
    layout = ctx.layout(spec.name)
    env = inherited_env()
    env["PATH"] = f"{prepared.install / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(
        airflow_environment(
            airflow_home=layout.home,
            dags_folder=layout.dags,
            plugins_folder=layout.plugins,
            install=prepared.install,
            sql_alchemy_conn=prepared.sql_alchemy_conn,
            ports=prepared.ports,
            secrets=prepared.secrets,
            parallelism=max(1, spec.tasks_per_worker * spec.max_workers),
            tasks_per_worker=spec.tasks_per_worker,
            options=spec.airflow_configuration_options,
            public_url=spec.endpoint_url,
        )
    )
    broker_url = broker_url_for(ctx, spec)
    if broker_url:
        env.update(
            celery.celery_environment(
                broker_url=broker_url,
                result_backend="db+" + prepared.sql_alchemy_conn,
                queue=queue_of(spec),
                tasks_per_worker=spec.tasks_per_worker,
            )
        )
        env["AIRFLOW__CORE__PARALLELISM"] = str(spec.tasks_per_worker * MAX_WORKERS_CAP)
    env.update(ctx.role_env(spec))
    env.update(
        {
            MARKER: str(layout.root),
            "AIRFLOW_VERSION": spec.airflow_version,
            "AIRFLOW_ENV_NAME": spec.name,
            "AIRFLOW_ENV_CLASS": spec.environment_class,
        }
    )
    return env


def fingerprint(ctx: Context, prepared: Prepared) -> str:
    """Changes exactly when the components must restart to run the new configuration."""
    payload = {
        "install": str(prepared.install),
        "env": component_env(ctx, prepared),
        "components": component_names(ctx, prepared.spec),
        "plugins": prepared.plugins_hash,
        "startup": prepared.startup_hash,
        "tenant": ctx.tenant(prepared.spec.name).user,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def component_specs(
    ctx: Context, prepared: Prepared, exports: Mapping[str, Mapping[str, str]], fingerprint: str
) -> list[ComponentSpec]:
    """What the supervisor runs: one spec per component, startup-script exports applied."""
    layout = ctx.layout(prepared.spec.name)
    base_env = component_env(ctx, prepared)
    airflow = str(prepared.install / "bin" / "airflow")
    specs = []
    for component in component_names(ctx, prepared.spec):
        command = component.split("-")[0] if component.startswith("scheduler") else component
        env = {**base_env, **exports.get(MWAA_COMPONENT[command], {})}
        specs.append(
            ComponentSpec(
                name=component,
                argv=[airflow, command],
                env=env,
                cwd=layout.home,
                log_path=layout.log(component),
                fingerprint=fingerprint,
                tenant=ctx.tenant(prepared.spec.name),
            )
        )
    return specs
