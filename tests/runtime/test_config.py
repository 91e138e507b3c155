"""Configuration rendering, refused keys, install keys and uv error lines."""

from __future__ import annotations

from pathlib import Path

from openmwaa.runtime.config import Ports, Secrets, airflow_environment, refused_config_keys
from openmwaa.runtime.installs import (
    SUPPORTED_VERSIONS,
    constraints_file,
    install_key,
    useful_uv_line,
)


def test_refused_keys() -> None:
    options = {
        "core.dag_concurrency": "16",
        "core.executor": "CeleryExecutor",
        "database.sql_alchemy_conn": "sqlite://",
        "database.sql_alchemy_conn_cmd": "cat x",
        "core.fernet_key": "x",
        "api.secret_key": "x",
        "api_auth.jwt_secret": "x",
        "core.auth_manager": "x",
        "core.simple_auth_manager_all_admins": "True",
        "api.port": "1",
        "core.dags_folder": "/tmp",
        "logging.base_log_folder": "/tmp",
        "webserver.default_ui_timezone": "UTC",
        "nodot": "x",
    }
    refused = refused_config_keys(options)
    assert "core.dag_concurrency" not in refused
    assert "webserver.default_ui_timezone" not in refused
    assert set(refused) == set(options) - {"core.dag_concurrency", "webserver.default_ui_timezone"}


def test_environment_variables(tmp_path: Path) -> None:
    env = airflow_environment(
        airflow_home=tmp_path,
        install=tmp_path / "install",
        sql_alchemy_conn="sqlite:////x.db",
        ports=Ports(30001, 30002, 30003),
        secrets=Secrets("j", "s", "f", "d", {"admin": "p"}),
        parallelism=20,
        tasks_per_worker=5,
        options={"core.dag_concurrency": "7", "Core.Executor": "CeleryExecutor"},
    )
    assert env["AIRFLOW__CORE__DAG_CONCURRENCY"] == "7"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"  # the service's value wins
    assert env["AIRFLOW__CORE__PARALLELISM"] == "20"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:30001/execution/"
    assert int(env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"]) <= 5


def test_install_keys_and_constraints() -> None:
    assert SUPPORTED_VERSIONS[0] == "3.3.2"
    assert install_key("3.3.2", None) == install_key("3.3.2", "# only a comment\n\n")
    assert install_key("3.3.2", "requests\n") == install_key("3.3.2", "requests  # why\r\n")
    assert install_key("3.3.2", "requests") != install_key("3.0.6", "requests")
    for version in SUPPORTED_VERSIONS:
        pins = constraints_file(version).read_text()
        assert f"apache-airflow=={version}" in pins
        assert "\ncelery==5." in pins and "\ncelery==5.7" not in pins


def test_useful_uv_line() -> None:
    output = (
        "  × No solution found when resolving dependencies:\n"
        "  ╰─▶ Because nope was not found in the package registry, we can conclude\n"
        "      that your requirements are unsatisfiable.\n"
    )
    assert "nope was not found" in useful_uv_line(output)
    plain = "error: No solution found\n  cause: Because nope was not found\n"
    assert useful_uv_line(plain) == "No solution found: Because nope was not found"
