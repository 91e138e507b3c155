"""Where Airflow runs: installs, configuration and the backends behind ``base.Backend``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openmwaa.runtime.base import RuntimeFailure

if TYPE_CHECKING:
    from openmwaa.runtime.base import Backend
    from openmwaa.runtime.local.context import ExecutionRoles
    from openmwaa.settings import Settings


def make_backend(settings: Settings, roles: ExecutionRoles | None = None) -> Backend:
    """The backend named by ``settings.backend``; ``roles``: the execution roles its
    environments act with (runtime/roles.py), None when the server has no AWS credentials."""
    if settings.backend == "local":
        from openmwaa.runtime import celery, database
        from openmwaa.runtime.local import LocalBackend

        # Refuse to start on services that are not there, naming the one that is missing.
        if settings.broker_url and not settings.airflow_database_url:
            raise RuntimeFailure(
                "CONFIGURATION",
                "--broker-url needs --airflow-database-url (Celery workers share a "
                "PostgreSQL metadata database)",
            )
        if settings.airflow_database_url:
            database.pg_check(settings.airflow_database_url)
        if settings.broker_url:
            celery.check_broker(settings.broker_url)

        return LocalBackend(
            settings.data_dir,
            bucket_store=settings.bucket_store,
            airflow_database_url=settings.airflow_database_url,
            broker_url=settings.broker_url,
            rabbitmq_management_url=settings.rabbitmq_management_url,
            roles=roles,
            isolate=settings.isolate,
        )
    # Other backends ("test": runtime/testing.py, later "kubernetes") are added here.
    raise ValueError(f"unknown backend {settings.backend!r}")
