"""Server settings: one place that knows the defaults and the environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT_ID = "123456789012"
SCALE_IN_COOLDOWN = 120.0
"""MWAA removes extra workers after about two minutes without work for them."""
PRIVATE_UMASK = 0o077
"""Set first by every command: what the server and its children create is the owner's only
(secrets, databases, logs, installs), whatever the calling shell's umask."""


def default_data_dir() -> Path:
    return Path(os.environ.get("OPENMWAA_DATA_DIR") or Path.home() / ".openmwaa")


def secure_data_dir(data_dir: Path) -> Path:
    """Create the data dir, and make it the owner's only at every start, whoever created it
    (``mkdir``'s mode is filtered by the umask and leaves an existing folder as it was)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    return data_dir


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    region: str = DEFAULT_REGION
    account_id: str = DEFAULT_ACCOUNT_ID
    database_url: str | None = None
    """The control plane's own store; SQLite in the data dir when unset."""
    backend: str = "local"
    """``local`` (Airflow processes on this host) or ``test`` (see runtime/testing.py)."""
    public_host: str | None = None
    """Address the PUBLIC_* web server access modes are served on."""
    airflow_database_url: str | None = None
    """PostgreSQL admin URL: environments get their own database and role there."""
    broker_url: str | None = None
    """Redis or RabbitMQ URL: with ``airflow_database_url``, environments run CeleryExecutor
    workers that autoscale between MinWorkers and MaxWorkers."""
    rabbitmq_management_url: str | None = None
    """``http://USER:PASSWORD@HOST:15672`` of an amqp:// broker's management API: each
    environment gets a virtual host and user of its own there. Without it, environments
    on RabbitMQ share the broker URL's account (logged at start). Redis needs nothing:
    its ACL users are made with the broker URL."""
    isolate: bool = True
    """Each environment runs as an OS user of its own inside its class's resource limits
    (when the server runs as root). Off: environments run as the server's user, for a
    single trusted team (said at start and in ``openmwaa status``)."""
    scale_in_cooldown: float = SCALE_IN_COOLDOWN
    """Seconds of lower load before the autoscaler removes workers."""
    bucket_store: str = "local"
    """``local`` (folders under ``<data-dir>/buckets``) or ``s3`` (boto3's usual configuration)."""
    reconcile_interval: float = 2.0
    """Seconds between health checks of running environments."""

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'openmwaa.db'}"

    @property
    def endpoint_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"
