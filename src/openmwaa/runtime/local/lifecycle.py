"""Running an environment's components: adopt, launch, startup script, orphans.

Components are supervised processes with pid files (pid + create time +
configuration fingerprint), so a successor of a killed control plane adopts
those that run the current configuration and stops every other leftover.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openmwaa.runtime import celery
from openmwaa.runtime.base import EnvironmentSpec, Progress, RuntimeFailure, WorkerBundle
from openmwaa.runtime.brokers.redis_acl import RespError, purge_keys
from openmwaa.runtime.bundles import portable_env
from openmwaa.runtime.installs import useful_error_line
from openmwaa.runtime.local import health
from openmwaa.runtime.local.components import (
    Prepared,
    component_env,
    component_names,
    component_specs,
    fingerprint,
    queue_of,
)
from openmwaa.runtime.local.context import Context
from openmwaa.runtime.local.mirror import ensure_mirror, stop_mirror
from openmwaa.runtime.local.state import load_exports, save_exports
from openmwaa.runtime.ports import port_is_free
from openmwaa.runtime.startup import run_startup_script
from openmwaa.runtime.supervisor import (
    marked_processes,
    read_pidfile,
    recorded_sessions,
    tail,
    terminate,
)
from openmwaa.runtime.workers import WorkerTemplate

log = logging.getLogger(__name__)

START_TIMEOUT = 240.0
"""launch() waits this long for all-healthy; later the reconciler's health polls take over."""
ABORT_GRACE = 5.0
"""A start that failed has nothing worth a graceful stop."""


def running(ctx: Context, name: str) -> bool:
    """All components up or restarting (workers come and go, so they don't count)."""
    states = ctx.supervisor.states(name)
    base = [s for c, s in states.items() if celery.worker_index(c) is None]
    return bool(base) and all(s in ("running", "restarting") for s in base)


def configure_workers(
    ctx: Context, prepared: Prepared, exports: Mapping[str, Mapping[str, str]], fp: str
) -> None:
    """Tell the worker pool (and worker hosts, through the bundle) what workers run."""
    if not ctx.broker_url:
        return
    spec = prepared.spec
    layout = ctx.layout(spec.name)
    base_env = component_env(ctx, prepared)
    ctx.env(spec.name).bundle = WorkerBundle(
        airflow_version=spec.airflow_version,
        requirements=prepared.requirements,
        env=portable_env(base_env),
        queue=queue_of(spec),
        concurrency=spec.tasks_per_worker,
        startup_script=prepared.startup,
        fingerprint=fp,
        folders={"dags": layout.dags, "plugins": layout.plugins},
    )
    ctx.workers.configure(
        spec.name,
        WorkerTemplate(
            airflow=str(prepared.install / "bin" / "airflow"),
            env={**base_env, **exports.get("worker", {})},
            cwd=layout.home,
            log_dir=layout.logs,
            run_dir=layout.run,
            queue=queue_of(spec),
            concurrency=spec.tasks_per_worker,
            hostname=spec.name,
            fingerprint=fp,
            log_port=lambda worker, replace_busy: ctx.ports.named_port(
                spec.name, worker, replace_busy=replace_busy
            ),
            tenant=ctx.tenant(spec.name),
            pid_dir=layout.celery_run,
        ),
    )


def adopt(ctx: Context, prepared: Prepared) -> bool:
    """Take over components a killed control plane left running, if they match."""
    name = prepared.spec.name
    layout = ctx.layout(name)
    fp = fingerprint(ctx, prepared)
    found = {c: read_pidfile(layout.run / f"{c}.json") for c in component_names(ctx, prepared.spec)}
    if not all(f is not None and f[1] == fp for f in found.values()):
        kill_orphans(layout.root)
        return False
    try:
        exports = load_exports(layout)
    except RuntimeFailure as exc:
        exports = None
        log.warning("%s; starting the components afresh", exc)
    if exports is None and prepared.startup is not None:
        # What the startup script exported is unknown: run it again rather than guess.
        kill_orphans(layout.root)
        return False
    for spec in component_specs(ctx, prepared, exports or {}, fp):
        entry = found[spec.name]
        assert entry is not None
        ctx.supervisor.adopt(name, spec, layout.run, entry[0])
    configure_workers(ctx, prepared, exports or {}, fp)
    for pidfile in layout.run.glob(f"{celery.WORKER_PREFIX}*.json"):
        worker = read_pidfile(pidfile)
        if worker is not None and worker[1] == fp:
            ctx.supervisor.adopt(
                name, ctx.workers.spec(name, pidfile.stem, running=True), layout.run, worker[0]
            )
        elif worker is not None:
            terminate([worker[0]])
    ctx.env(name).fingerprint = fp
    log.info("adopted the running components of %s", name)
    return True


def kill_orphans(env_dir: Path) -> None:
    """Stop every process a previous control plane left for this environment."""
    run_dir = env_dir / "run"
    sessions = recorded_sessions(run_dir)
    procs = []
    pidfiles = list(run_dir.glob("*.json")) if run_dir.is_dir() else []
    for pidfile in pidfiles:
        found = read_pidfile(pidfile)
        if found:
            procs.append(found[0])
    known = {q.pid for q in procs}
    procs += [p for p in marked_processes(env_dir, sessions) if p.pid not in known]
    for pidfile in pidfiles:
        pidfile.unlink(missing_ok=True)
    if procs:
        log.warning("stopping %d leftover processes of %s", len(procs), env_dir.name)
        terminate(procs)


def launch(ctx: Context, prepared: Prepared, progress: Progress) -> None:
    """Run the startup script, start the components and wait until Airflow is healthy."""
    spec = prepared.spec
    name = spec.name
    layout = ctx.layout(name)
    kill_orphans(layout.root)
    busy = [p for p in prepared.ports.__dict__.values() if not port_is_free(p)]
    if busy:
        log.warning("ports %s of %s are taken; allocating others", busy, name)
        prepared.ports = ctx.ports.allocate(name, replace_busy=True)
    exports = run_startup(ctx, prepared, progress)
    save_exports(layout, exports)
    ctx.check_stopping()
    fp = fingerprint(ctx, prepared)
    progress("starting Airflow components")
    ctx.supervisor.launch(
        name, component_specs(ctx, prepared, exports, fp), layout.run, restart_on_exit=False
    )
    env = ctx.env(name)
    env.fingerprint = fp
    env.forget_tokens()
    try:
        ensure_mirror(ctx, spec)
        wait_started(ctx, spec, progress)
    except BaseException:
        ctx.supervisor.stop(name, grace=ABORT_GRACE)
        kill_orphans(layout.root)
        stop_mirror(ctx, name)
        raise
    ctx.supervisor.set_restart_on_exit(name, True)
    configure_workers(ctx, prepared, exports, fp)
    if ctx.broker_url:
        progress(f"starting {spec.min_workers} Celery workers")
        ctx.workers.scale(name, spec.min_workers)


def run_startup(ctx: Context, prepared: Prepared, progress: Progress) -> dict[str, dict[str, str]]:
    """Run the startup script once per MWAA component kind; what each run exported."""
    if prepared.startup is None:
        return {}
    progress("running the startup script")
    layout = ctx.layout(prepared.spec.name)
    base = component_env(ctx, prepared)
    protected = set(base) - {"PATH"}
    kinds = sorted({"scheduler", "webserver", *(["worker"] if ctx.broker_url else [])})

    def run(kind: str) -> dict[str, str]:
        return run_startup_script(
            layout.startup_script,
            {**base, "MWAA_AIRFLOW_COMPONENT": kind},
            cwd=layout.home,
            log_path=layout.logs / f"startup-{kind}.log",
            protected=protected | {"MWAA_AIRFLOW_COMPONENT"},
            tenant=ctx.tenant(prepared.spec.name),
        )

    with ThreadPoolExecutor(len(kinds)) as pool:
        return dict(zip(kinds, pool.map(run, kinds), strict=True))


def wait_started(ctx: Context, spec: EnvironmentSpec, progress: Progress) -> None:
    """Until healthy; a component exiting fails the start, a stopping control plane
    interrupts it."""
    progress("waiting for Airflow to report healthy")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ctx.check_stopping()
        for cname, comp in ctx.supervisor.components(spec.name).items():
            # An exit during start fails the start, even when the supervisor has
            # already restarted the component by the time this loop looks.
            if comp.exit_codes or not comp.alive():
                code = comp.exit_codes[0] if comp.exit_codes else comp.returncode()
                runs = tail(comp.spec.log_path).split("--- openmwaa: starting")
                restarted = comp.alive() and len(runs) > 2
                text = runs[-2] if restarted else runs[-1]
                raise RuntimeFailure(
                    "COMPONENT_FAILED",
                    f"{cname} exited at start (code {code}): {useful_error_line(text)}",
                )
        if health.check(ctx, spec).healthy:
            return
        ctx.stopping.wait(0.5)
    log.warning("%s not healthy after %.0fs; leaving it to health checks", spec.name, START_TIMEOUT)


def purge_broker(ctx: Context, spec: EnvironmentSpec) -> None:
    """Remove a deleted environment's keys from a Redis broker (best effort), then its
    broker account: the ACL user, or the RabbitMQ virtual host with its queues and user.
    A failed removal fails the step (retried): the account must not outlive it."""
    if not ctx.broker_url:
        return
    _purge_keys(spec, ctx.broker_url)
    if ctx.brokers is not None:
        ctx.brokers.remove(queue_of(spec))
        log.info("%s: removed its broker account", spec.name)


def _purge_keys(spec: EnvironmentSpec, admin_url: str) -> None:
    if not celery.broker_address(admin_url)[0].startswith("redis"):
        return  # RabbitMQ: the virtual host goes with its queues
    try:
        removed = purge_keys(admin_url, celery.redis_key_prefix(queue_of(spec)))
    except (RespError, OSError, ValueError) as exc:
        # Left-over keys harm no one (the queue name is never reused): say so and go on.
        log.warning("%s: broker keys left in place: %s", spec.name, exc)
        return
    log.info("%s: removed %d broker keys", spec.name, removed)
