"""CLI and web login tokens, the Airflow roles they act as, and what redeeming one opens.

Callers reach their Airflow as an Airflow role. As in MWAA, the role is the
highest of Admin, Op, User, Viewer, Public whose role ARN
(``arn:aws:airflow:REGION:ACCOUNT:role/ENV/ROLE``) the caller's policy allows
for the action. Tokens are random, kept only as SHA-256 digests, single-use
and short-lived.

Authorization comes before any look-up of the environment: role ARNs derive
from the name alone, so a caller who may not act on an environment learns
nothing about whether it exists.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from openmwaa.runtime.base import AirflowCli, Backend, EnvironmentSpec, RuntimeFailure
from openmwaa.runtime.config import ROLES as AIRFLOW_USERS
from openmwaa.service.airflow3 import AirflowDialect, dialect_for
from openmwaa.service.endpoint_addresses import EndpointAddresses
from openmwaa.service.environments import Environments
from openmwaa.service.errors import AccessDeniedException, ValidationException
from openmwaa.service.identity import Caller
from openmwaa.store.db import Store
from openmwaa.store.models import TokenRow
from openmwaa.store.status import SERVING, Status

ROLES = ("Admin", "Op", "User", "Viewer", "Public")
TOKEN_LIFETIME = timedelta(seconds=60)
INVALID_TOKEN = "The token is invalid, expired or already used: create a new one."


@dataclass(frozen=True)
class Session:
    """What a redeemed web login token opens: the environment's UI as ``role``."""

    environment: str
    role: str
    jwt: str
    dialect: AirflowDialect


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def role_for(envs: Environments, caller: Caller, name: str, action: str) -> str:
    """The highest Airflow role the caller may act as, or AccessDeniedException.

    Reads nothing but the caller's policies, so it may (and must) run before the
    environment is looked up.
    """
    for role in ROLES:
        if caller.allowed(action, envs.role_arn(name, role)):
            return role
    try:
        caller.authorize(action, envs.role_arn(name, "Admin"))
    except AccessDeniedException as e:
        # MwaaHook looks for "Airflow role" to fall back to a web login session.
        raise AccessDeniedException(
            f"{e.message} (the caller may act as no Airflow role of {name})"
        ) from None
    raise AssertionError("authorize always raises here")  # pragma: no cover


def airflow_user(name: str, role: str) -> str:
    """The Airflow user a role acts as (what Airflow records), or AccessDeniedException for
    MWAA's Public role, which has no Airflow permissions and so no user."""
    user = AIRFLOW_USERS.get(role)
    if user is None:
        raise AccessDeniedException(
            f"The caller's highest Airflow role of {name} is {role}, which has no access to "
            "Airflow: allow one of the Admin, Op, User or Viewer role ARNs."
        )
    return user


def check_serving(row: Any, statuses: frozenset[Status] = SERVING) -> None:
    if row.status not in statuses or row.applied is None:
        raise ValidationException(
            f"Environment {row.name} is {row.status}: its web server is reachable only "
            "while it is AVAILABLE."
        )


class Tokens:
    """Mints and redeems the tokens of the environment endpoint."""

    def __init__(
        self,
        store: Store,
        environments: Environments,
        backend: Backend,
        addresses: EndpointAddresses,
    ) -> None:
        self._store = store
        self._envs = environments
        self._backend = backend
        self.addresses = addresses

    def _hostname(self, name: str, row: Any) -> str:
        config = row.applied or row.spec
        return self.addresses.hostname(name, config["WebserverAccessMode"])

    def _running(self, name: str) -> Any:
        row = self._envs.row(name)
        check_serving(row)
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
        """CreateCliToken; the caller is authorized on the environment ARN beforehand."""
        row = self._running(name)
        return {
            "CliToken": self._mint("cli", name, "Admin", caller),
            "WebServerHostname": self._hostname(name, row),
        }

    def web_login_token(self, caller: Caller, name: str) -> dict[str, Any]:
        role = role_for(self._envs, caller, name, "CreateWebLoginToken")
        user = airflow_user(name, role)
        row = self._running(name)
        return {
            "WebToken": self._mint("web", name, role, caller),
            "WebServerHostname": self._hostname(name, row),
            "IamIdentity": caller.arn,
            "AirflowIdentity": user,
        }

    def redeem(self, token: str, kind: str, name: str) -> TokenRow:
        """Use a token of ``kind`` minted for environment ``name``: once, within 60 s."""
        row = self._store.redeem_token(digest(token), kind, datetime.now(UTC))
        if row is None or row.environment != name:
            raise AccessDeniedException(INVALID_TOKEN)
        return row

    # -- what the gateway redeems tokens for -----------------------------------------------

    def spec(self, name: str) -> EnvironmentSpec:
        """The running configuration of a serving environment (ValidationException if not)."""
        return self._envs.spec_of(name, self._running(name).applied)

    def airflow_base(self, name: str) -> tuple[str, AirflowDialect] | None:
        """(API server base URL, dialect) of the environment, None while it has none."""
        row = self._store.get_environment(name)
        if row is None or row.applied is None:
            return None
        spec = self._envs.spec_of(name, row.applied)
        base = self._backend.webserver_url(spec)
        return (base, dialect_for(spec.airflow_version)) if base else None

    def web_session(self, name: str, token: str) -> Session:
        """Redeem a web login token for the session of its Airflow role.

        AccessDeniedException for a bad token or a role with no Airflow user,
        ValidationException when the environment is not serving.
        """
        row = self.redeem(token, "web", name)
        spec = self.spec(name)
        try:
            _, jwt = self._backend.airflow_api(spec, row.airflow_role)
        except RuntimeFailure as e:
            if e.code == "ACCESS_DENIED":
                raise AccessDeniedException(
                    f"The {row.airflow_role} role has no access to the Airflow UI."
                ) from None
            raise
        return Session(name, row.airflow_role, jwt, dialect_for(spec.airflow_version))

    def cli(self, name: str, token: str) -> AirflowCli:
        """Redeem a CLI token: how to run the environment's Airflow CLI (the backend's)."""
        self.redeem(token, "cli", name)
        return self._backend.airflow_cli(self.spec(name))
