"""Where Airflow runs: installs, configuration and the backends behind ``base.Backend``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openmwaa.runtime.base import Backend
    from openmwaa.settings import Settings


def make_backend(settings: Settings) -> Backend:
    """The backend named by ``settings.backend``."""
    if settings.backend == "local":
        from openmwaa.runtime.local import LocalBackend

        return LocalBackend(
            settings.data_dir,
            bucket_store=settings.bucket_store,
            airflow_database_url=settings.airflow_database_url,
        )
    # Other backends ("test": runtime/testing.py, later "kubernetes") are added here.
    raise ValueError(f"unknown backend {settings.backend!r}")
