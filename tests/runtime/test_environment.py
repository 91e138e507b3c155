"""A real Airflow 3 environment driven through LocalBackend (shared, destroyed last)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from live_server import wait_for
from runtime_support import Api, assert_healthy, make_spec, simple_dag

from openmwaa.runtime.base import EnvironmentSpec, RuntimeFailure
from openmwaa.runtime.local import COMPONENTS, LocalBackend, prepare
from openmwaa.runtime.ports import port_is_free
from openmwaa.runtime.supervisor import marked_processes, recorded_sessions


def test_environment_is_healthy_and_secured(
    backend: LocalBackend, running: tuple[EnvironmentSpec, Api], data_dir: Path
) -> None:
    spec, api = running
    health = backend.health(spec)
    assert health.healthy, health.detail
    assert set(health.components) >= set(COMPONENTS) | {"metadatabase"}
    url = backend.webserver_url(spec)
    assert url and url.startswith("http://127.0.0.1:")
    # The REST API refuses anonymous callers; every MWAA role has a user.
    assert httpx.get(f"{url}/api/v2/dags", timeout=10).status_code == 401
    for role in ("Admin", "Op", "User", "Viewer"):
        base, token = backend.airflow_api(spec, role)
        resp = httpx.get(
            f"{base}/api/v2/dags", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert resp.status_code == 200, (role, resp.text)
    assert backend.airflow_api(spec, "Admin") == backend.airflow_api(spec, "Admin")  # cached
    cached = backend.airflow_api(spec, "Admin")[1]
    time.sleep(1.1)  # a new token differs from the cached one at least in its issue time
    renewed = backend.airflow_api(spec, "Admin", fresh=True)[1]
    assert renewed != cached  # a token Airflow refused is not handed out again
    assert backend.airflow_api(spec, "Admin")[1] == renewed
    env_dir = data_dir / "environments" / "main"
    for secret in (
        env_dir / "secrets.json",
        env_dir / "airflow/simple_auth_manager_passwords.json",
    ):
        assert secret.stat().st_mode & 0o777 == 0o600
    password = backend.secrets("main").admin_password
    for log in (env_dir / "logs").glob("*.log"):
        assert password not in log.read_text(errors="replace")


def test_dag_run_with_parallel_tasks_and_a_retry(running: tuple[EnvironmentSpec, Api]) -> None:
    _, api = running
    wait_for(lambda: "pipeline" in api.dag_ids(), 60, "the pipeline DAG")
    resp = api.request("PATCH", "/dags/pipeline", json={"is_paused": False})
    assert resp.status_code == 200, resp.text
    resp = api.request("POST", "/dags/pipeline/dagRuns", json={"logical_date": None})
    assert resp.status_code in (200, 201), resp.text
    run_id = resp.json()["dag_run_id"]

    def finished() -> str | None:
        state = api.request("GET", api.run_path("pipeline", run_id)).json()["state"]
        return state if state in ("success", "failed") else None

    assert wait_for(finished, 180, "the DAG run to finish", interval=1) == "success"
    tis = api.request("GET", api.run_path("pipeline", run_id) + "/taskInstances").json()
    by_id = {ti["task_id"]: ti for ti in tis["task_instances"]}
    assert {t: by_id[t]["state"] for t in by_id} == dict.fromkeys(
        ("left", "right", "join", "flaky"), "success"
    )
    assert by_id["flaky"]["try_number"] == 2
    assert by_id["left"]["try_number"] == 1
    tries = api.request(
        "GET", api.run_path("pipeline", run_id) + "/taskInstances/flaky/tries"
    ).json()
    assert [t["state"] for t in tries["task_instances"]][:1] == ["failed"]


def test_dag_in_subfolder_appears_and_deleted_dag_disappears(
    running: tuple[EnvironmentSpec, Api], bucket: Path
) -> None:
    _, api = running
    nested = bucket / "dags" / "team_a" / "etl"
    nested.mkdir(parents=True, exist_ok=True)
    (nested / "nested_dag.py").write_text(simple_dag("nested_dag"))
    (bucket / "dags" / "doomed.py").write_text(simple_dag("doomed"))
    started = time.monotonic()
    wait_for(lambda: {"nested_dag", "doomed"} <= api.dag_ids(), 60, "the new DAGs")
    print(f"new DAGs visible in {time.monotonic() - started:.1f}s")
    (bucket / "dags" / "doomed.py").unlink()

    def gone() -> bool:
        resp = api.request("GET", "/dags/doomed")
        return resp.status_code == 404 or resp.json().get("is_stale") is True

    wait_for(gone, 90, "the deleted DAG to disappear")
    assert "nested_dag" in api.dag_ids()
    dags = Path(running[1].backend.layout("main").dags)
    assert (dags / "team_a" / "etl" / "nested_dag.py").is_file()
    assert not (dags / "doomed.py").exists()


def test_startup_script_exports_reach_components(
    backend: LocalBackend, running: tuple[EnvironmentSpec, Api]
) -> None:
    spec, _ = running
    comps = backend.supervisor.components(spec.name)
    scheduler_env = comps["scheduler"].proc.environ()  # type: ignore[union-attr]
    assert scheduler_env["OPENMWAA_TEST_COMPONENT"] == "scheduler"
    # (the API server's /proc environ is overwritten by setproctitle: check what it got)
    assert comps["api-server"].spec.env["OPENMWAA_TEST_COMPONENT"] == "webserver"
    # A script may not override what the service owns.
    assert scheduler_env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_killed_component_is_restarted(
    backend: LocalBackend, running: tuple[EnvironmentSpec, Api]
) -> None:
    spec, _ = running
    old = backend.supervisor.components(spec.name)["scheduler"].pid
    assert old
    os.kill(old, signal.SIGKILL)

    def restarted() -> bool:
        comp = backend.supervisor.components(spec.name)["scheduler"]
        return comp.pid != old and comp.alive()

    killed_at = time.time()
    wait_for(restarted, 30, "the scheduler to be restarted")
    base = backend.webserver_url(spec)

    def heartbeat_after_kill() -> bool:
        report = httpx.get(f"{base}/api/v2/monitor/health", timeout=5).json()["scheduler"]
        beat = report.get("latest_scheduler_heartbeat")
        return bool(beat) and datetime.fromisoformat(beat).timestamp() > killed_at

    wait_for(heartbeat_after_kill, 60, "a heartbeat of the new scheduler")
    assert_healthy(backend, spec)
    new = backend.supervisor.components(spec.name)["scheduler"].pid
    schedulers = [
        p
        for p in marked_processes(backend.layout(spec.name).root)
        if p.cmdline()[-1:] == ["scheduler"]
    ]
    # Nothing of the killed scheduler is left: every scheduler process is the new one or a
    # process it forked (the executor's workers carry the same command line).
    assert schedulers
    for proc in schedulers:
        try:
            ancestors = {parent.pid for parent in proc.parents()}
        except psutil.NoSuchProcess:
            continue  # gone meanwhile: not a leftover
        assert proc.pid == new or new in ancestors, proc


def test_airflow_cli_runs_as_the_scheduler(
    backend: LocalBackend, running: tuple[EnvironmentSpec, Api]
) -> None:
    spec, _ = running
    cli = backend.airflow_cli(spec)
    scheduler = backend.supervisor.components(spec.name)["scheduler"].spec
    # As the scheduler runs: the same program, user and cgroups.
    assert cli.argv == tuple(scheduler.tenant.wrap([scheduler.argv[0]]))
    assert Path(cli.argv[-1]).name == "airflow"
    assert cli.env["OPENMWAA_TEST_COMPONENT"] == "scheduler"  # startup-script exports
    assert cli.cwd == backend.layout(spec.name).home
    assert "dags list" in cli.definition["commands"]
    proc = subprocess.run(
        [*cli.argv, "dags", "list", "-o", "plain"],
        env=dict(cli.env),
        cwd=cli.cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0 and "pipeline" in proc.stdout, proc.stderr[-2000:]
    with pytest.raises(RuntimeFailure) as failure:
        backend.airflow_cli(make_spec("not-started"))
    assert failure.value.code == "NOT_RUNNING"


def test_tokens_do_not_wait_for_a_slow_step(
    backend: LocalBackend, running: tuple[EnvironmentSpec, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an update builds an install (held here), token fetches answer at once."""
    spec, _ = running
    building, release = threading.Event(), threading.Event()
    real_install = prepare.ensure_install

    def slow_install(*args: Any, **kwargs: Any) -> Path:
        building.set()
        release.wait(120)
        return real_install(*args, **kwargs)

    monkeypatch.setattr(prepare, "ensure_install", slow_install)
    with ThreadPoolExecutor(2) as pool:
        update = pool.submit(backend.apply, spec, spec, print)
        try:
            assert building.wait(30), "the update did not reach the install"
            started = time.monotonic()
            token = pool.submit(backend.airflow_api, spec, "Admin", fresh=True)
            base, _ = token.result(timeout=20)
            assert base == backend.webserver_url(spec)
            assert time.monotonic() - started < 15
            backend.set_workers(spec, 1)  # never waits either
        finally:
            release.set()
        update.result(timeout=120)


def test_a_stopped_dag_mirror_is_unhealthy_until_apply_runs_it(
    backend: LocalBackend, running: tuple[EnvironmentSpec, Api], bucket: Path
) -> None:
    spec, api = running
    mirror = backend.ctx.env(spec.name).mirror
    assert mirror is not None
    mirror.stop()  # its thread ends, as after an uncaught failure
    health = backend.health(spec)
    assert not health.healthy
    assert health.components["dag-sync"] == "stopped"
    assert "DAG mirror of s3://tests/dags is not running" in health.detail
    backend.apply(spec, spec, print)  # nothing changed: the early return runs it too
    assert_healthy(backend, spec)
    (bucket / "dags" / "revived.py").write_text(simple_dag("revived"))
    try:
        wait_for(lambda: "revived" in api.dag_ids(), 60, "a DAG the revived mirror copied")
    finally:
        (bucket / "dags" / "revived.py").unlink()


def test_apply_restarts_only_when_needed(
    backend: LocalBackend, running: tuple[EnvironmentSpec, Api], bucket: Path
) -> None:
    spec, api = running
    pids = {n: c.pid for n, c in backend.supervisor.components(spec.name).items()}
    # Only the DAG folder moves: the mirror is re-pointed, nothing restarts.
    (bucket / "dags2").mkdir(exist_ok=True)
    (bucket / "dags2" / "moved.py").write_text(simple_dag("moved"))
    moved = dataclasses.replace(spec, dag_s3_path="dags2")
    backend.apply(spec, moved, print)
    assert {n: c.pid for n, c in backend.supervisor.components(spec.name).items()} == pids
    wait_for(lambda: "moved" in api.dag_ids(), 60, "the DAG of the new path")
    # A configuration option changes: the components restart with it.
    configured = dataclasses.replace(
        moved, airflow_configuration_options={"core.default_task_retries": "2"}
    )
    backend.apply(moved, configured, print)
    comps = backend.supervisor.components(spec.name)
    assert all(comps[n].pid != pids[n] for n in COMPONENTS)
    env = comps["scheduler"].proc.environ()  # type: ignore[union-attr]
    assert env["AIRFLOW__CORE__DEFAULT_TASK_RETRIES"] == "2"
    assert_healthy(backend, configured)
    for pid in pids.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_destroy_leaves_nothing(
    backend: LocalBackend, running: tuple[EnvironmentSpec, Api], data_dir: Path
) -> None:
    spec, _ = running
    env_dir = data_dir / "environments" / spec.name
    ports = backend.ports.get(spec.name)
    assert ports
    sessions = recorded_sessions(env_dir / "run")
    assert len(sessions) == len(COMPONENTS)
    assert len(marked_processes(env_dir, sessions)) >= len(COMPONENTS)
    backend.destroy(spec, print)
    assert not env_dir.exists()
    assert marked_processes(env_dir, sessions) == []
    assert all(port_is_free(p) for p in (ports.api, ports.worker_log, ports.trigger_log))
    assert not backend.health(spec).healthy
    backend.destroy(spec, print)  # idempotent
    assert make_spec("main").name == spec.name
