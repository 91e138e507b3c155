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
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx
from anyio import to_thread

from openmwaa.runtime.base import Backend, EnvironmentSpec, RuntimeFailure
from openmwaa.service.airflow3 import AirflowDialect, dialect_for
from openmwaa.service.documents import RawJson
from openmwaa.service.endpoint_addresses import EndpointAddresses
from openmwaa.service.environments import Environments
from openmwaa.service.errors import (
    AccessDeniedException,
    ResourceNotFoundException,
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
SERVING_STATUSES = ("AVAILABLE", "UPDATE_FAILED", "UPDATING")
REST_API_STATUSES = (*SERVING_STATUSES, "UNAVAILABLE")
"""InvokeRestApi also tries an UNAVAILABLE environment: a slow health check should not fail
calls Airflow can answer, and a down Airflow gives RestApiServerException 502."""
_BODYLESS = ("GET", "HEAD", "DELETE")
INVALID_TOKEN = "The token is invalid, expired or already used: create a new one."
API_CACHE_SECONDS = 30.0
"""How long InvokeRestApi reuses an environment's (API URL, role JWT) for one generation."""


@runtime_checkable
class CliBackend(Protocol):
    """A backend that can run the Airflow CLI of an environment (the local one can)."""

    def airflow_env(self, spec: EnvironmentSpec) -> tuple[Path, dict[str, str]]: ...


@dataclass(frozen=True)
class Session:
    """What a redeemed web login token opens: the environment's UI as ``role``."""

    environment: str
    role: str
    jwt: str
    dialect: AirflowDialect


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Endpoint:
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
        self._api_cache: dict[tuple[str, str, int], tuple[float, str, str]] = {}
        self._api_lock = threading.Lock()
        # One pooled client on the server's event loop: InvokeRestApi reuses connections
        # to the API servers and waits for Airflow without holding a worker thread.
        self._http = httpx.AsyncClient(
            timeout=REST_API_TIMEOUT,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            # Callers share this client: a cookie one's call got must not go with another's.
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
            # The backend's API server URL is reached directly, never through the proxy
            # that HTTP_PROXY/ALL_PROXY may name for the service's outbound traffic.
            trust_env=False,
        )
        # Loopback needs no compression: without Accept-Encoding, Airflow's GZipMiddleware
        # skips compressing what this side would only decompress again.
        del self._http.headers["accept-encoding"]

    def _hostname(self, name: str, row: Any) -> str:
        config = row.applied or row.spec
        return self.addresses.hostname(name, config["WebserverAccessMode"])

    def role_for(self, caller: Caller, name: str, action: str) -> str:
        """The highest Airflow role the caller may act as, or AccessDeniedException."""
        for role in ROLES:
            if caller.allowed(action, self._envs.role_arn(name, role)):
                return role
        try:
            caller.authorize(action, self._envs.role_arn(name, "Admin"))
        except AccessDeniedException as e:
            # MwaaHook looks for "Airflow role" to fall back to a web login session.
            raise AccessDeniedException(
                f"{e.message} (the caller may act as no Airflow role of {name})"
            ) from None
        raise AssertionError("authorize always raises here")  # pragma: no cover

    def _running(self, name: str) -> Any:
        row = self._envs.row(name)
        self._check_serving(row)
        return row

    def _check_serving(self, row: Any, statuses: tuple[str, ...] = SERVING_STATUSES) -> None:
        if row.status not in statuses or row.applied is None:
            raise ValidationException(
                f"Environment {row.name} is {row.status}: its web server is reachable only "
                "while it is AVAILABLE."
            )

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
        row = self._running(name)
        role = "Admin"
        return {
            "CliToken": self._mint("cli", name, role, caller),
            "WebServerHostname": self._hostname(name, row),
        }

    def web_login_token(self, caller: Caller, name: str) -> dict[str, Any]:
        self._envs.row(name)
        role = self.role_for(caller, name, "CreateWebLoginToken")
        row = self._running(name)
        return {
            "WebToken": self._mint("web", name, role, caller),
            "WebServerHostname": self._hostname(name, row),
            "IamIdentity": caller.arn,
            "AirflowIdentity": f"{caller.user_name}-{role}".lower()[:64],
        }

    def redeem(self, token: str, kind: str, name: str) -> TokenRow:
        """Use a token of ``kind`` minted for environment ``name``: once, within 60 s."""
        row = self._store.redeem_token(digest(token), kind, datetime.now(UTC))
        if row is None or row.environment != name:
            raise AccessDeniedException(INVALID_TOKEN)
        return row

    # -- the gateway ------------------------------------------------------------------------

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

    def cli_runner(self, name: str, token: str) -> tuple[Path, dict[str, str], Path | None]:
        """Redeem a CLI token: (``airflow`` binary, its environment, working folder)."""
        self.redeem(token, "cli", name)
        spec = self.spec(name)
        if not isinstance(self._backend, CliBackend):
            raise RuntimeFailure("NO_AIRFLOW_CLI", "this backend cannot run the Airflow CLI")
        binary, env = self._backend.airflow_env(spec)
        home = env.get("AIRFLOW_HOME")
        return binary, env, Path(home) if home else None

    # -- InvokeRestApi --------------------------------------------------------------------------

    def _cached_target(self, key: tuple[str, str, int]) -> tuple[str, str] | None:
        with self._api_lock:
            hit = self._api_cache.get(key)
        return (hit[1], hit[2]) if hit is not None and hit[0] > time.monotonic() else None

    def _fetch_target(self, key: tuple[str, str, int], spec: EnvironmentSpec) -> tuple[str, str]:
        """Ask the backend for the role's (base URL, JWT) and cache it; may block on Airflow."""
        now = time.monotonic()
        base, token = self._backend.airflow_api(spec, key[1])
        url = base + dialect_for(spec.airflow_version).rest_api_prefix
        with self._api_lock:
            if len(self._api_cache) > 1000:
                self._api_cache.clear()
            self._api_cache[key] = (now + API_CACHE_SECONDS, url, token)
        return url, token

    async def _rest_api_target(
        self, key: tuple[str, str, int], spec: EnvironmentSpec, *, fresh: bool
    ) -> tuple[str, str]:
        """(REST API base URL, JWT of the role's user), cached per environment generation.

        A cached target costs no thread hop; fetching one (``POST /auth/token`` to the
        environment) runs in a worker thread.
        """
        if not fresh:
            hit = self._cached_target(key)
            if hit is not None:
                return hit
        return await to_thread.run_sync(self._fetch_target, key, spec)

    async def invoke_rest_api(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        """Call the environment's Airflow REST API as the caller's role, on the event loop.

        The one store read is a single indexed row (as GetEnvironment's, answered on the
        loop too); the request to Airflow is awaited, so the common path (a cached JWT)
        never leaves the event loop. RuntimeFailure when the backend cannot reach Airflow.
        """
        name = p["Name"]
        row = self._store.environment_state(name)  # one lean read: callers see its latency
        if row is None:
            raise ResourceNotFoundException(f"Environment {name} does not exist.")
        role = self.role_for(caller, name, "InvokeRestApi")
        self._check_serving(row, REST_API_STATUSES)
        assert row.applied is not None
        spec = self._envs.spec_of(name, row.applied)
        path = p["Path"] if p["Path"].startswith("/") else "/" + p["Path"]
        if ".." in path.split("/") or "?" in path or "#" in path:
            raise ValidationException(
                f"Path {p['Path']!r} must be an Airflow REST API path such as /dags, "
                "without '..', '?' or '#'; pass query parameters in QueryParameters."
            )
        method = p["Method"]
        body = p.get("Body")
        send_body = body is not None and (method not in _BODYLESS or body != {})
        key = (name, role, row.generation)
        for attempt in (1, 2):
            url, token = await self._rest_api_target(key, spec, fresh=attempt == 2)
            try:
                response = await self._http.request(
                    method,
                    url + path,
                    params=p.get("QueryParameters") or None,
                    json=body if send_body else None,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.TimeoutException:
                raise RestApiException(504, {"detail": "Airflow did not answer in 10 s"}) from None
            except httpx.ConnectError as e:
                if attempt == 1:  # not sent; the API server may have moved: look it up again
                    continue
                raise RestApiException(502, {"detail": f"Airflow is unreachable: {e}"}) from None
            except httpx.HTTPError as e:
                raise RestApiException(502, {"detail": f"Airflow is unreachable: {e}"}) from None
            if response.status_code == 401 and attempt == 1:
                continue  # a cached JWT the environment no longer accepts
            break
        if response.status_code < 400 and _is_json(response):
            # Airflow's JSON (FastAPI's, always valid) goes on as it came: decoding it only
            # to encode it again would cost time in proportion to its size.
            answer: Any = RawJson(response.content)
        else:
            try:
                answer = response.json() if response.content else {}
            except ValueError:
                answer = {"detail": response.text}
        if response.status_code >= 400:
            raise RestApiException(response.status_code, answer)
        return {"RestApiStatusCode": response.status_code, "RestApiResponse": answer}


def _is_json(response: httpx.Response) -> bool:
    """Whether the answer is a JSON document in UTF-8 (what Airflow's API sends)."""
    if not response.content:
        return False
    media_type, _, parameters = response.headers.get("content-type", "").partition(";")
    charset = parameters.partition("charset=")[2].strip().strip('"').lower()
    return media_type.strip().lower() == "application/json" and charset in ("", "utf-8")
