"""Admin accounts that leave environments open to each other.

Each environment has its own PostgreSQL role and database (and broker queue), but all of
it is made through the server's admin accounts: a PostgreSQL that lets ``postgres`` in
without a password (trust), a Redis whose default user has none, or a RabbitMQ that takes
guest/guest from this host lets any task on this host act as the admin and undo the
separation. In production mode the server tries each door at start (short timeouts,
never with the admin's password), logs what it finds and keeps it in ``exposure.json``
for ``openmwaa status``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from openmwaa.core.files import read_json, write_json
from openmwaa.runtime import celery
from openmwaa.runtime.base import RuntimeFailure

FILE = "exposure.json"
"""In the data dir: the findings of the running (or last) server's start."""
NO_PASSFILE = "/nonexistent/openmwaa/pgpass"
"""libpq skips a password file that does not exist, silently (/dev/null gets a warning)."""
TIMEOUT = 2.0
"""Seconds per check: a door that does not answer at once is not reported."""


def check_postgres(admin_url: str, timeout: float = TIMEOUT) -> str | None:
    """What is wrong when the admin URL's user logs in with no password, else None."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    user = url.username or "postgres"
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    params = {
        "host": url.host or "",
        "port": str(url.port or 5432),
        "user": user,
        "dbname": url.database or "postgres",
        # An empty password and a password file that is not there: neither PGPASSWORD
        # nor ~/.pgpass can answer for the admin.
        "password": "",
        "passfile": NO_PASSFILE,
        "connect_timeout": str(max(2, round(timeout))),
    }
    try:
        psycopg.connect(**params).close()  # type: ignore[arg-type]
    except psycopg.Error:
        return None  # a password is required (or the server is not there: pg_check says so)
    return (
        f"PostgreSQL at {where} lets anyone on this host connect as {user} without a "
        "password (trust authentication): any task can reach every environment's "
        "database. Require scram-sha-256 in pg_hba.conf."
    )


def _without_credentials(url: str, user: str = "", password: str = "") -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    if user or password:
        netloc = f"{user}:{password}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_broker(broker_url: str, timeout: float = TIMEOUT) -> str | None:
    """What is wrong when the broker lets anyone in (Redis: no password; RabbitMQ:
    guest/guest from this host), else None. TLS brokers are not tried."""
    try:
        scheme, host, port = celery.broker_address(broker_url)
    except ValueError:
        return None
    where = f"{host}:{port}"
    if scheme == "redis":
        try:
            celery.check_broker(_without_credentials(broker_url), timeout)
        except RuntimeFailure:
            return None
        return (
            f"Redis at {where} lets anyone on this host in without a password (its default "
            "user has none): any task can read and delete every environment's Celery "
            "messages. Set requirepass (or an ACL default user with a password) and put "
            "the password in --broker-url."
        )
    if scheme in ("amqp", "pyamqp"):
        try:
            celery.check_broker(_without_credentials(broker_url, "guest", "guest"), timeout)
        except RuntimeFailure:
            return None
        return (
            f"RabbitMQ at {where} takes the guest/guest login from this host: any task can "
            "read every environment's Celery messages. Delete the guest user "
            "(rabbitmqctl delete_user guest) and give the server a user of its own in "
            "--broker-url."
        )
    return None


def check(
    airflow_database_url: str | None, broker_url: str | None, timeout: float = TIMEOUT
) -> list[str]:
    """Every finding for the server's admin accounts (production mode only)."""
    findings = []
    if airflow_database_url:
        findings.append(check_postgres(airflow_database_url, timeout))
    if broker_url:
        findings.append(check_broker(broker_url, timeout))
    return [f for f in findings if f]


def save(data_dir: Path, findings: list[str]) -> None:
    """Keep the findings where ``openmwaa status`` reads them (an empty list clears)."""
    write_json(Path(data_dir) / FILE, {"findings": findings}, mode=0o600)


def load(data_dir: Path) -> list[str]:
    """The findings of the server's last start; none when it never checked."""
    data = read_json(Path(data_dir) / FILE)
    return [str(f) for f in (data or {}).get("findings", [])]
