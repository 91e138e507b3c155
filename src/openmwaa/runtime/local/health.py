"""Health of a started environment: what each component, Airflow itself, the broker
(with the environment's own credentials), the workers and the DAG mirror report.

Called every few seconds by the reconciler's health watch and while a start waits,
so every check is cheap and bounded by a short timeout.
"""

from __future__ import annotations

import httpx

from openmwaa.runtime import celery
from openmwaa.runtime.base import EnvironmentSpec, Health, RuntimeFailure
from openmwaa.runtime.local.components import (
    broker_url_for,
    component_names,
    ensure_broker_account,
)
from openmwaa.runtime.local.context import Context
from openmwaa.runtime.local.mirror import is_running

HEALTH_KEYS = {
    "metadatabase": "metadatabase",
    "scheduler": "scheduler",
    "dag_processor": "dag-processor",
    "triggerer": "triggerer",
}
"""Sections of Airflow's /api/v2/monitor/health -> our component names."""
CRASH_LOOPING = "crash-looping"
"""Supervisor state of a component that keeps exiting right after it starts."""
BROKER_VARIABLE = "AIRFLOW__CELERY__BROKER_URL"


def check(ctx: Context, spec: EnvironmentSpec) -> Health:
    """One reading of the environment's health; ``detail`` says what is wrong."""
    states = ctx.supervisor.states(spec.name)
    names = component_names(ctx, spec)
    if not states:
        return Health(False, "Airflow is not running", {c: "down" for c in names})
    components = {
        c: ("healthy" if states.get(c) == "running" else states.get(c, "down")) for c in names
    }
    problems = [_problem(ctx, spec.name, c, s) for c, s in components.items() if s != "healthy"]
    if ctx.broker_url:
        _check_broker(ctx, spec, components, problems)
        for worker, state in ctx.workers.states(spec.name).items():
            # Workers come and go with the autoscaler; one that keeps crashing is a problem.
            components[worker] = "healthy" if state == "running" else state
            if state == CRASH_LOOPING:
                problems.append(_problem(ctx, spec.name, worker, state))
    report = _airflow_report(ctx, spec, states, components, problems)
    for key, name in HEALTH_KEYS.items():
        entry = report.get(key)
        status = entry.get("status") if isinstance(entry, dict) else None
        if status == "healthy":
            components.setdefault(name, "healthy")
            continue
        if components.get(name, "healthy") == "healthy":
            components[name] = str(status or "unknown")
            if report:
                problems.append(f"{name} is {status or 'not reporting'}")
    failing = _check_mirror(ctx, spec, components, problems)
    healthy = not problems and bool(report)
    if failing:
        # Reported, not judged: Airflow keeps running on the DAGs it has.
        problems.append(failing)
    return Health(healthy, "; ".join(dict.fromkeys(problems)), components)


def _problem(ctx: Context, name: str, component: str, state: str) -> str:
    """``<component> is <state>``; for one that keeps crashing, how often and why."""
    if state != CRASH_LOOPING:
        return f"{component} is {state}"
    reason = ctx.supervisor.crash_looping(name).get(component, "")
    return f"{component} is {state}" + (
        f": {reason.removeprefix(component + ' ')}" if reason else ""
    )


def broker_url_of(ctx: Context, spec: EnvironmentSpec) -> str | None:
    """The broker URL the environment's components (and so its workers) use."""
    scheduler = ctx.supervisor.components(spec.name).get("scheduler")
    if scheduler is not None and scheduler.spec.env.get(BROKER_VARIABLE):
        return scheduler.spec.env[BROKER_VARIABLE]
    return broker_url_for(ctx, spec)


def _check_broker(
    ctx: Context, spec: EnvironmentSpec, components: dict[str, str], problems: list[str]
) -> None:
    url = broker_url_of(ctx, spec)
    if url is None:
        return
    try:
        try:
            celery.check_broker(url)
        except RuntimeFailure as exc:
            if exc.code != celery.CREDENTIALS_REFUSED or ctx.brokers is None:
                raise
            # The environment's own account went missing (a Redis restarted without an
            # ACL file, a user deleted by hand): make it again, then judge.
            ensure_broker_account(ctx, spec)
            celery.check_broker(url)
        components["broker"] = "healthy"
    except RuntimeFailure as exc:
        components["broker"] = "unreachable"
        problems.append(str(exc))


def _airflow_report(
    ctx: Context,
    spec: EnvironmentSpec,
    states: dict[str, str],
    components: dict[str, str],
    problems: list[str],
) -> dict[str, object]:
    """Airflow's own health report (empty when the API server does not give one)."""
    ports = ctx.ports.get(spec.name)
    if not ports or states.get("api-server") != "running":
        return {}
    try:
        resp = ctx.http.get(f"http://127.0.0.1:{ports.api}/api/v2/monitor/health", timeout=3.0)
        report = resp.json() if resp.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        components["api-server"] = "starting"
        problems.append("api-server is not answering yet")
        return {}
    if not isinstance(report, dict) or not report:
        problems.append(f"api-server answered HTTP {resp.status_code}")
        return {}
    return report


def _check_mirror(
    ctx: Context, spec: EnvironmentSpec, components: dict[str, str], problems: list[str]
) -> str | None:
    """A stopped mirror is a problem; a failing one (bucket unreachable) is returned."""
    env = ctx.known_env(spec.name)
    mirror = env.mirror if env else None
    if not is_running(mirror):
        # Nothing would ever bring bucket changes again: unhealthy, with the reason.
        components["dag-sync"] = "stopped"
        problems.append(
            f"the DAG mirror of s3://{spec.source_bucket}/{spec.dag_s3_path} is not running"
        )
        return None
    assert mirror is not None
    components["dag-sync"] = "failing" if mirror.last_error else "healthy"
    return f"DAG sync failing: {mirror.last_error}" if mirror.last_error else None
