"""apache-airflow-providers-amazon's MwaaHook and MwaaTriggerDagRunOperator against openmwaa.

They run in the Airflow install the environments use (a second Airflow, the
"calling" one), with an ``aws_default`` connection pointed at openmwaa, and
trigger a DAG in the environment ``ep``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from live_server import wait_for

from openmwaa.runtime.installs import DEFAULT_VERSION, install_key

ENV = "ep"

SCRIPT = """
import json, sys
from airflow.providers.amazon.aws.hooks.mwaa import MwaaHook
from airflow.providers.amazon.aws.operators.mwaa import MwaaTriggerDagRunOperator

hook = MwaaHook(aws_conn_id="aws_default")
listed = hook.invoke_rest_api(env_name="ep", path="/dags", method="GET")
operator = MwaaTriggerDagRunOperator(
    task_id="trigger_remote",
    env_name="ep",
    trigger_dag_id="hello",
    trigger_run_id="from-mwaa-operator",
    logical_date="2025-01-01T00:00:00+00:00",
    conf={"via": "MwaaTriggerDagRunOperator"},
    airflow_version=3,
    aws_conn_id="aws_default",
)
triggered = operator.execute({})
print(json.dumps({"listed": listed, "triggered": triggered}, default=str))
"""


def test_mwaa_hook_and_trigger_operator(
    plane: Any, admin: Any, environment: dict[str, Any], ep_data_dir: Path, tmp_path: Path
) -> None:
    python = ep_data_dir / "runtimes" / install_key(DEFAULT_VERSION, None) / "bin" / "python"
    creds = plane.credentials()
    connection = {
        "conn_type": "aws",
        "login": creds["key"],
        "password": creds["secret"],
        "extra": {
            "region_name": "us-east-1",
            "endpoint_url": plane.endpoint,
            "config_kwargs": {"inject_host_prefix": False, "retries": {"max_attempts": 1}},
        },
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    done = subprocess.run(
        [str(python), "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["listed"]["RestApiStatusCode"] == 200
    assert "hello" in {d["dag_id"] for d in result["listed"]["RestApiResponse"]["dags"]}
    assert result["triggered"]["RestApiResponse"]["dag_run_id"] == "from-mwaa-operator"

    def conf() -> Any:
        run = admin.invoke_rest_api(
            Name=ENV, Path="/dags/hello/dagRuns/from-mwaa-operator", Method="GET"
        )
        return run["RestApiResponse"]["conf"]

    assert wait_for(conf, 10, "the triggered run") == {"via": "MwaaTriggerDagRunOperator"}
