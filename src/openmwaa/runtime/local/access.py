"""Access to an environment's Airflow: REST API tokens and the Airflow CLI.

Token fetches take only the environment's token lock, never the lock its lifecycle
steps hold for minutes (a uv install), so InvokeRestApi and web logins answer
while an environment is being provisioned or updated.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from pathlib import Path

import httpx

from openmwaa.runtime.base import AirflowCli, EnvironmentSpec, RuntimeFailure
from openmwaa.runtime.config import ROLES
from openmwaa.runtime.local.context import Context
from openmwaa.runtime.local.state import load_secrets

TOKEN_MARGIN = 300.0
"""A cached token is used until this many seconds before it expires."""


def webserver_url(ctx: Context, spec: EnvironmentSpec) -> str | None:
    ports = ctx.ports.get(spec.name)
    return f"http://127.0.0.1:{ports.api}" if ports else None


def airflow_api(
    ctx: Context, spec: EnvironmentSpec, role: str = "Admin", *, fresh: bool = False
) -> tuple[str, str]:
    """(API server base URL, bearer token of the environment's user for MWAA ``role``).

    Tokens come from ``POST /auth/token`` and are cached until 5 minutes before expiry
    (``fresh``: not taken from the cache).
    """
    user = ROLES.get(role.capitalize())
    if user is None:
        raise RuntimeFailure(
            "ACCESS_DENIED", f"role {role} has no Airflow permissions (use {', '.join(ROLES)})"
        )
    env = ctx.env(spec.name)
    base = webserver_url(ctx, spec)
    if base is None:
        raise RuntimeFailure("NOT_RUNNING", f"environment {spec.name} is not started")
    with env.tokens_lock:
        cached = env.tokens.get(user)
        if cached and cached[1] - time.time() > TOKEN_MARGIN and not fresh:
            return base, cached[0]
        layout = ctx.layout(spec.name)
        if not layout.secrets.exists():
            raise RuntimeFailure("NOT_RUNNING", f"environment {spec.name} is not provisioned")
        password = load_secrets(layout).passwords[user]
        try:
            resp = ctx.http.post(
                f"{base}/auth/token", json={"username": user, "password": password}, timeout=10.0
            )
        except httpx.HTTPError as exc:
            raise RuntimeFailure("AIRFLOW_API_FAILED", f"POST /auth/token: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise RuntimeFailure(
                "AIRFLOW_API_FAILED", f"POST /auth/token answered HTTP {resp.status_code}"
            )
        token = str(resp.json()["access_token"])
        env.tokens[user] = (token, jwt_expiry(token))
        return base, token


def airflow_cli(ctx: Context, spec: EnvironmentSpec) -> AirflowCli:
    """How to run the Airflow CLI of a started environment: as its scheduler runs
    (startup-script exports included), with the install's own CLI definition."""
    from openmwaa.runtime.airflow_cli import cli_definition

    scheduler = ctx.supervisor.components(spec.name).get("scheduler")
    if scheduler is None:
        raise RuntimeFailure("NOT_RUNNING", f"environment {spec.name} is not running")
    airflow = Path(scheduler.spec.argv[0])
    return AirflowCli(
        argv=tuple(scheduler.spec.tenant.wrap([str(airflow)])),
        env=dict(scheduler.spec.env),
        cwd=scheduler.spec.cwd,
        definition=cli_definition(airflow.parent.parent),
    )


def jwt_expiry(token: str) -> float:
    """When a JWT expires (its ``exp``), or in 10 minutes when it cannot be read."""
    with contextlib.suppress(Exception):
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    return time.time() + 600
