"""The environment endpoint's domain: CLI and web login tokens, and InvokeRestApi.

Callers reach their Airflow as an Airflow role. As in MWAA, the role is the
highest of Admin, Op, User, Viewer, Public whose role ARN
(``arn:aws:airflow:REGION:ACCOUNT:role/ENV/ROLE``) the caller's policy allows
for the action. Tokens are random, kept only as SHA-256 digests, single-use
and short-lived.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from openmwaa.runtime.base import Backend
from openmwaa.service.environments import Environments
from openmwaa.service.errors import (
    AccessDeniedException,
    RestApiException,
    ValidationException,
)
from openmwaa.service.identity import Caller
from openmwaa.store.db import Store
from openmwaa.store.models import TokenRow

ROLES = ("Admin", "Op", "User", "Viewer", "Public")
TOKEN_LIFETIME = timedelta(seconds=60)
REST_API_TIMEOUT = 10.0
"""MWAA gives InvokeRestApi 10 seconds."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Endpoint:
    def __init__(
        self, store: Store, environments: Environments, backend: Backend, hostname: str
    ) -> None:
        self._store = store
        self._envs = environments
        self._backend = backend
        self._hostname = hostname

    def role_for(self, caller: Caller, name: str, action: str) -> str:
        """The highest Airflow role the caller may act as, or AccessDeniedException."""
        for role in ROLES:
            if caller.allowed(action, self._envs.role_arn(name, role)):
                return role
        caller.authorize(action, self._envs.role_arn(name, "Admin"))
        raise AssertionError("authorize always raises here")  # pragma: no cover

    def _running(self, name: str) -> Any:
        row = self._envs.row(name)
        if row.status not in ("AVAILABLE", "UPDATE_FAILED", "UPDATING") or row.applied is None:
            raise ValidationException(
                f"Environment {name} is {row.status}: its web server is reachable only "
                "while it is AVAILABLE."
            )
        return row

    def _mint(self, kind: str, name: str, role: str, caller: Caller) -> str:
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        self._store.purge_tokens(now)
        self._store.add_token(
            TokenRow(
                digest=digest(token),
                kind=kind,
                environment=name,
                airflow_role=role,
                iam_identity=caller.arn,
                expires_at=now + TOKEN_LIFETIME,
                used=0,
            )
        )
        return token

    def cli_token(self, caller: Caller, name: str) -> dict[str, Any]:
        self._running(name)
        role = "Admin"
        return {
            "CliToken": self._mint("cli", name, role, caller),
            "WebServerHostname": self._hostname,
        }

    def web_login_token(self, caller: Caller, name: str) -> dict[str, Any]:
        self._envs.row(name)
        role = self.role_for(caller, name, "CreateWebLoginToken")
        self._running(name)
        return {
            "WebToken": self._mint("web", name, role, caller),
            "WebServerHostname": self._hostname,
            "IamIdentity": caller.arn,
            "AirflowIdentity": f"{caller.user_name}-{role}".lower()[:64],
        }

    def redeem(self, token: str, kind: str) -> TokenRow:
        row = self._store.redeem_token(digest(token), kind, datetime.now(UTC))
        if row is None:
            raise AccessDeniedException(
                "The token is invalid, expired or already used: create a new one."
            )
        return row

    def invoke_rest_api(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        name = p["Name"]
        self._envs.row(name)
        role = self.role_for(caller, name, "InvokeRestApi")
        row = self._running(name)
        spec = self._envs.spec_of(name, row.applied)
        path = p["Path"] if p["Path"].startswith("/") else "/" + p["Path"]
        if ".." in path.split("/") or "?" in path or "#" in path:
            raise ValidationException(
                f"Path {p['Path']!r} must be an Airflow REST API path such as /dags, "
                "without '..', '?' or '#'; pass query parameters in QueryParameters."
            )
        base, token = self._backend.airflow_api(spec, role)
        try:
            response = httpx.request(
                p["Method"],
                f"{base}/api/v2{path}",
                params=p.get("QueryParameters") or None,
                json=p.get("Body"),
                headers={"Authorization": f"Bearer {token}"},
                timeout=REST_API_TIMEOUT,
            )
        except httpx.TimeoutException:
            raise RestApiException(504, {"detail": "Airflow did not answer in 10 s"}) from None
        except httpx.HTTPError as e:
            raise RestApiException(502, {"detail": f"Airflow is unreachable: {e}"}) from None
        try:
            body: Any = response.json()
        except ValueError:
            body = {"detail": response.text}
        if response.status_code >= 400:
            raise RestApiException(response.status_code, body)
        return {"RestApiStatusCode": response.status_code, "RestApiResponse": body}
