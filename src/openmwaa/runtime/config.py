"""Airflow configuration of one environment, rendered as ``AIRFLOW__SECTION__KEY`` variables.

The service owns the settings that wire an environment together (executor,
metadata DB, keys, auth, ports, folders); users may set everything else
through AirflowConfigurationOptions, as on MWAA. ``refused_config_keys`` lets
the domain refuse the owned ones with a ValidationException before anything
starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
ADMIN_USER = "admin"
ROLES = {"Admin": "admin", "Op": "op", "User": "user", "Viewer": "viewer"}
"""MWAA role -> SimpleAuthManager user (named after its role) of every environment.
MWAA's ``Public`` role has no Airflow permissions, so it has no user."""

# (section, key) pairs the service owns; their _cmd/_secret variants are refused too.
_REFUSED: frozenset[tuple[str, str]] = frozenset(
    {
        ("core", "executor"),
        ("core", "sql_alchemy_conn"),
        ("database", "sql_alchemy_conn"),
        ("database", "sql_alchemy_conn_async"),
        ("database", "sql_alchemy_engine_args"),
        ("database", "sql_alchemy_schema"),
        ("core", "fernet_key"),
        ("core", "internal_api_secret_key"),
        ("api", "secret_key"),
        ("webserver", "secret_key"),
        ("api_auth", "jwt_secret"),
        ("api_auth", "jwt_private_key_path"),
        ("api_auth", "jwt_algorithm"),
        ("api_auth", "jwt_issuer"),
        ("api_auth", "trusted_jwks_url"),
        ("core", "auth_manager"),
        ("api", "host"),
        ("api", "port"),
        ("api", "base_url"),
        ("api", "ssl_cert"),
        ("api", "ssl_key"),
        ("webserver", "web_server_host"),
        ("webserver", "web_server_port"),
        ("webserver", "base_url"),
        ("core", "execution_api_server_url"),
        ("logging", "worker_log_server_port"),
        ("logging", "trigger_log_server_port"),
        ("core", "dags_folder"),
        ("core", "plugins_folder"),
        ("logging", "base_log_folder"),
        ("logging", "dag_processor_child_process_log_directory"),
        ("scheduler", "child_process_log_directory"),
        ("dag_processor", "dag_bundle_config_list"),
        ("celery", "broker_url"),
        ("celery", "result_backend"),
    }
)
# Whole sections owned by the service.
_REFUSED_SECTIONS = frozenset({"kubernetes_executor", "database_cleanup"})
# Prefixes of keys owned by the service (every simple auth manager knob).
_REFUSED_PREFIXES: frozenset[tuple[str, str]] = frozenset({("core", "simple_auth_manager")})


def split_key(option: str) -> tuple[str, str] | None:
    """``core.dag_concurrency`` -> (``core``, ``dag_concurrency``); None if malformed."""
    section, dot, key = option.strip().partition(".")
    if not dot or not section or not key:
        return None
    return section.lower(), key.lower()


def env_var_name(option: str) -> str:
    parsed = split_key(option)
    if parsed is None:
        raise ValueError(f"configuration option {option!r} is not section.key")
    section, key = parsed
    return f"AIRFLOW__{section.upper()}__{key.upper()}"


def refused_config_keys(options: Mapping[str, str]) -> list[str]:
    """The AirflowConfigurationOptions keys users may not set (as MWAA refuses them)."""
    refused = []
    for option in options:
        parsed = split_key(option)
        if parsed is None:
            refused.append(option)
            continue
        section, key = parsed
        base = key.removesuffix("_cmd").removesuffix("_secret")
        if (
            section in _REFUSED_SECTIONS
            or (section, key) in _REFUSED
            or (section, base) in _REFUSED
            or any(section == s and key.startswith(p) for s, p in _REFUSED_PREFIXES)
        ):
            refused.append(option)
    return refused


@dataclass(frozen=True)
class Ports:
    api: int
    worker_log: int
    trigger_log: int


@dataclass(frozen=True)
class Secrets:
    jwt_secret: str
    api_secret_key: str
    fernet_key: str
    db_password: str
    passwords: dict[str, str]
    """SimpleAuthManager user -> password."""

    @property
    def admin_password(self) -> str:
        return self.passwords[ADMIN_USER]


def airflow_environment(
    *,
    airflow_home: Path,
    install: Path,
    sql_alchemy_conn: str,
    ports: Ports,
    secrets: Secrets,
    parallelism: int,
    tasks_per_worker: int,
    options: Mapping[str, str],
    public_url: str | None = None,
    dags_folder: Path | None = None,
    plugins_folder: Path | None = None,
) -> dict[str, str]:
    """The variables every component of the environment runs with (secrets included).

    ``public_url`` is the environment endpoint users reach the UI through: Airflow's
    ``[api] base_url``, so its links and redirects go there; the execution API stays
    on loopback.
    """
    base = f"http://127.0.0.1:{ports.api}"
    env: dict[str, str] = {}
    # Users' options first: the service's own settings below win over them.
    for option, value in options.items():
        if split_key(option) is not None:
            env[env_var_name(option)] = str(value)
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder or airflow_home / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder or airflow_home / "plugins"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
            "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
            "AIRFLOW__CORE__FERNET_KEY": secrets.fernet_key,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(ports.api),
            "AIRFLOW__API__BASE_URL": public_url or base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__API__SECRET_KEY": secrets.api_secret_key,
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.jwt_secret,
            # A string issuer: Airflow 3.0's default (none) fails with PyJWT >= 2.10.
            "AIRFLOW__API_AUTH__JWT_ISSUER": f"openmwaa:{airflow_home.parent.name}",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports.worker_log),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.trigger_log),
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                f"{user}:{user}" for user in ROLES.values()
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                airflow_home / "simple_auth_manager_passwords.json"
            ),
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(tasks_per_worker),
        }
    )
    # Fast DAG discovery: the DAG folder is listed every second (the default check
    # every 5 s and refresh every 300 s make a new DAG wait minutes), edits are
    # re-parsed after 5 s. Users may still choose slower values.
    env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "1")
    env.setdefault("AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL", "1")
    env.setdefault("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "5")
    env.setdefault("AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL", "5")
    return env
