"""Airflow version changes: 3.0.6 -> 3.3.2 keeps the run history; a rollback restores 3.0.6."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from live_server import wait_for
from runtime_support import PIPELINE_DAG, Api, assert_healthy, make_spec

from openmwaa.runtime.local import LocalBackend


def test_upgrade_then_rollback(backend: LocalBackend, bucket: Path) -> None:
    (bucket / "upgrade").mkdir(exist_ok=True)
    (bucket / "upgrade" / "history.py").write_text(PIPELINE_DAG.replace('"pipeline"', '"history"'))
    old = make_spec("upgrade", airflow_version="3.0.6", dag_s3_path="upgrade")
    new = dataclasses.replace(old, airflow_version="3.3.2")
    try:
        backend.provision(old, print)
        backend.start(old, print)
        api = Api(backend, old)
        wait_for(lambda: "history" in api.dag_ids(), 60, "the DAG on 3.0.6")
        version = api.request("GET", "/version").json()["version"]
        assert version == "3.0.6"
        resp = api.request("POST", "/dags/history/dagRuns", json={"logical_date": None})
        assert resp.status_code in (200, 201), resp.text
        run_id = resp.json()["dag_run_id"]
        assert api.request("PATCH", "/dags/history", json={"is_paused": False}).status_code == 200

        def finished() -> str | None:
            state = api.request("GET", api.run_path("history", run_id)).json()["state"]
            return state if state in ("success", "failed") else None

        assert wait_for(finished, 180, "the run on 3.0.6", interval=1) == "success"

        backend.apply(old, new, print)
        api = Api(backend, new)
        assert api.request("GET", "/version").json()["version"] == "3.3.2"
        runs = api.request("GET", "/dags/history/dagRuns").json()["dag_runs"]
        assert run_id in {r["dag_run_id"] for r in runs}

        backend.apply(new, old, print)  # the reconciler's rollback
        api = Api(backend, old)
        assert api.request("GET", "/version").json()["version"] == "3.0.6"
        assert_healthy(backend, old)
        runs = api.request("GET", "/dags/history/dagRuns").json()["dag_runs"]
        assert run_id in {r["dag_run_id"] for r in runs}
    finally:
        backend.destroy(old, print)
