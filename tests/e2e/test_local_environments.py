"""Real Airflow environments through the MWAA API: boto3 against a live ``openmwaa serve``
with the local backend, sharing the test run's one Airflow install.

The tests of this module run in order on one environment, as a user would: create,
run a DAG, add and remove DAG files, update, break an update, restart the control
plane, kill a component, delete.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from live_server import NETWORK, Server, wait_status
from runtime_support import PIPELINE_DAG, simple_dag, slow_dag

from openmwaa.runtime.supervisor import marked_processes

NAME = "etl"
BUCKET = "e2e-dags"
CREATE_TIMEOUT = 240
FAST_RECOVERY = {
    # Tasks of a killed scheduler are reset after ~30 s instead of Airflow's 5 minutes.
    "scheduler.orphaned_tasks_check_interval": "15",
    "scheduler.task_instance_heartbeat_timeout": "30",
}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, airflow_runtimes: Path) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("local-backend")
    (data_dir / "runtimes").symlink_to(airflow_runtimes)
    dags = data_dir / "buckets" / BUCKET / "dags"
    dags.mkdir(parents=True)
    (dags / "pipeline.py").write_text(PIPELINE_DAG)
    (dags / "slow.py").write_text(slow_dag(15))
    srv = Server(data_dir, [])
    srv.start()
    yield srv
    srv.stop()
    assert _processes(srv, NAME) == [], "a clean stop of the server stops every environment"


@pytest.fixture(scope="module")
def mwaa(local: Server) -> Any:
    return local.client()


def _processes(server: Server, name: str) -> list[psutil.Process]:
    return marked_processes(server.data_dir / "environments" / name)


def _command(process: psutil.Process) -> str:
    """A process's command line; empty once it has exited (a killed one may be a zombie)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _create(mwaa: Any, name: str, **extra: Any) -> None:
    mwaa.create_environment(
        Name=name,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/airflow",
        SourceBucketArn=f"arn:aws:s3:::{BUCKET}",
        DagS3Path="dags",
        NetworkConfiguration=NETWORK,
        EnvironmentClass="mw1.micro",
        **extra,
    )


def _rest(mwaa: Any, method: str, path: str, **kwargs: Any) -> Any:
    return mwaa.invoke_rest_api(Name=NAME, Method=method, Path=path, **kwargs)["RestApiResponse"]


def _dag_ids(mwaa: Any) -> set[str]:
    return {
        d["dag_id"] for d in _rest(mwaa, "GET", "/dags", QueryParameters={"limit": 100})["dags"]
    }


def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_create_gives_a_running_airflow(mwaa: Any, local: Server) -> None:
    _create(mwaa, NAME, AirflowConfigurationOptions=FAST_RECOVERY)
    assert mwaa.get_environment(Name=NAME)["Environment"]["Status"] == "CREATING"
    env = wait_status(mwaa, NAME, {"AVAILABLE", "CREATE_FAILED"}, CREATE_TIMEOUT)
    assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
    assert env["WebserverUrl"].startswith("http")
    names = {_command(p) for p in _processes(local, NAME)}
    for component in ("scheduler", "dag-processor", "triggerer", "api"):
        assert any(component.replace("-", "") in n.replace("-", "").replace("_", "") for n in names)


def test_dag_with_parallel_tasks_and_a_retry_succeeds(mwaa: Any) -> None:
    _until(lambda: "pipeline" in _dag_ids(mwaa), 60, "the pipeline DAG")
    _rest(mwaa, "PATCH", "/dags/pipeline", Body={"is_paused": False})
    run = _rest(mwaa, "POST", "/dags/pipeline/dagRuns", Body={"logical_date": None})

    def finished() -> Any:
        runs = _rest(mwaa, "GET", "/dags/pipeline/dagRuns")["dag_runs"]
        mine = [r for r in runs if r["dag_run_id"] == run["dag_run_id"]]
        return mine and mine[0]["state"] in ("success", "failed") and mine[0]

    assert _until(finished, 180, "the DAG run")["state"] == "success"
    tasks = _rest(mwaa, "GET", "/dags/~/dagRuns/~/taskInstances")["task_instances"]
    tries = {t["task_id"]: t["try_number"] for t in tasks if t["dag_id"] == "pipeline"}
    assert tries["flaky"] == 2, tries
    assert tries["left"] == tries["right"] == tries["join"] == 1


def test_dag_files_in_subfolders_appear_and_deleted_ones_disappear(
    mwaa: Any, local: Server
) -> None:
    sub = local.data_dir / "buckets" / BUCKET / "dags" / "team" / "nested"
    sub.mkdir(parents=True)
    (sub / "nested_dag.py").write_text(simple_dag("nested_dag"))
    _until(lambda: "nested_dag" in _dag_ids(mwaa), 60, "a DAG in a subfolder")
    (sub / "nested_dag.py").unlink()
    _until(lambda: "nested_dag" not in _dag_ids(mwaa), 90, "the deleted DAG to go")


def test_update_takes_effect(mwaa: Any, local: Server) -> None:
    mwaa.update_environment(
        Name=NAME,
        AirflowConfigurationOptions={**FAST_RECOVERY, "core.max_active_runs_per_dag": "7"},
    )
    env = wait_status(mwaa, NAME, {"AVAILABLE", "UPDATE_FAILED"}, CREATE_TIMEOUT)
    assert env["Status"] == "AVAILABLE"
    assert env["LastUpdate"]["Status"] == "SUCCESS"
    scheduler = next(p for p in _processes(local, NAME) if "scheduler" in _command(p))
    assert scheduler.environ()["AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG"] == "7"


def test_failed_update_rolls_back(mwaa: Any, local: Server) -> None:
    bucket = local.data_dir / "buckets" / BUCKET
    (bucket / "requirements.txt").write_text("openmwaa-no-such-package-xyz==1.0\n")
    mwaa.update_environment(Name=NAME, RequirementsS3Path="requirements.txt")
    env = wait_status(mwaa, NAME, {"AVAILABLE", "UPDATE_FAILED", "UNAVAILABLE"}, CREATE_TIMEOUT)
    assert env["Status"] == "UPDATE_FAILED"
    assert env["LastUpdate"]["Error"]["ErrorCode"] == "INCORRECT_REQUIREMENTS"
    assert "openmwaa-no-such-package-xyz" in env["LastUpdate"]["Error"]["ErrorMessage"]
    assert "RequirementsS3Path" not in env, "the configuration was rolled back"
    assert "pipeline" in _dag_ids(mwaa), "the rolled-back environment still serves"


def test_server_sigkill_keeps_environments_and_history(mwaa: Any, local: Server) -> None:
    before = {p.pid for p in _processes(local, NAME)}
    local.stop(signal.SIGKILL)
    local.start()
    client = local.client()
    env = wait_status(client, NAME, {"AVAILABLE", "UPDATE_FAILED"}, CREATE_TIMEOUT)
    assert env["Status"] == "UPDATE_FAILED"
    runs = client.invoke_rest_api(Name=NAME, Method="GET", Path="/dags/pipeline/dagRuns")
    assert [r["state"] for r in runs["RestApiResponse"]["dag_runs"]] == ["success"]
    after = {p.pid for p in _processes(local, NAME)}
    assert before & after, "the running components were adopted, not duplicated"


def test_killed_component_is_restarted(mwaa: Any, local: Server) -> None:
    scheduler = next(p for p in _processes(local, NAME) if "scheduler" in _command(p))
    scheduler.kill()

    def restarted() -> bool:
        schedulers = [
            p for p in _processes(local, NAME)
            if "scheduler" in _command(p) and p.pid != scheduler.pid
        ]  # fmt: skip
        return bool(schedulers)

    _until(restarted, 60, "a new scheduler")
    env = wait_status(mwaa, NAME, {"UPDATE_FAILED", "AVAILABLE"}, 120)
    assert env["Status"] in ("UPDATE_FAILED", "AVAILABLE")


def test_task_survives_a_killed_scheduler(mwaa: Any, local: Server) -> None:
    """kill -9 of the scheduler while a task runs: Airflow completes or retries it."""
    _until(lambda: "slow" in _dag_ids(mwaa), 60, "the slow DAG")
    _rest(mwaa, "PATCH", "/dags/slow", Body={"is_paused": False})
    run = _rest(mwaa, "POST", "/dags/slow/dagRuns", Body={"logical_date": None})

    def task_state() -> str | None:
        tasks = _rest(mwaa, "GET", "/dags/slow/dagRuns/~/taskInstances")["task_instances"]
        mine = [t for t in tasks if t["dag_run_id"] == run["dag_run_id"]]
        return mine[0]["state"] if mine else None

    _until(lambda: task_state() == "running", 90, "the task to run")
    scheduler = next(p for p in _processes(local, NAME) if "scheduler" in _command(p))
    scheduler.kill()

    def finished() -> str | None:
        runs = _rest(mwaa, "GET", "/dags/slow/dagRuns")["dag_runs"]
        state = next(r["state"] for r in runs if r["dag_run_id"] == run["dag_run_id"])
        return state if state in ("success", "failed") else None

    assert _until(finished, 240, "the run to finish") == "success"
    assert wait_status(mwaa, NAME, {"UPDATE_FAILED", "AVAILABLE"}, 120)["Status"] in (
        "UPDATE_FAILED",
        "AVAILABLE",
    )


def test_create_failure_leaves_nothing(mwaa: Any, local: Server) -> None:
    bucket = local.data_dir / "buckets" / BUCKET
    (bucket / "startup.sh").write_text('echo "the license server is down" >&2\nexit 4\n')
    _create(mwaa, "broken", StartupScriptS3Path="startup.sh")
    env = wait_status(mwaa, "broken", {"AVAILABLE", "CREATE_FAILED"}, CREATE_TIMEOUT)
    assert env["Status"] == "CREATE_FAILED"
    assert env["LastUpdate"]["Error"]["ErrorCode"] == "STARTUP_SCRIPT_FAILED"
    assert "the license server is down" in env["LastUpdate"]["Error"]["ErrorMessage"]
    assert _processes(local, "broken") == []
    mwaa.delete_environment(Name="broken")
    _until(lambda: "broken" not in mwaa.list_environments()["Environments"], 60, "deletion")


def test_delete_leaves_no_process_and_no_folder(mwaa: Any, local: Server) -> None:
    mwaa.delete_environment(Name=NAME)
    _until(lambda: NAME not in mwaa.list_environments()["Environments"], 120, "deletion")
    with pytest.raises(mwaa.exceptions.ResourceNotFoundException):
        mwaa.get_environment(Name=NAME)
    assert _processes(local, NAME) == []
    assert not (local.data_dir / "environments" / NAME).exists()
