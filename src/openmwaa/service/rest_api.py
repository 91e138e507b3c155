"""InvokeRestApi: call an environment's Airflow REST API as the caller's Airflow role.

The call runs on the API's event loop: the environment's state is one lean store
read, the role's JWT is cached per environment generation, and the request is
awaited through an ``AirflowClient`` that ``server.py`` provides (the domain knows
nothing about HTTP; the client lives in ``api/airflow_http.py``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Generic, Protocol, TypeVar

from anyio import to_thread

from openmwaa.runtime.base import Backend, RuntimeFailure
from openmwaa.service.airflow3 import dialect_for
from openmwaa.service.documents import RawJson
from openmwaa.service.environments import Environments
from openmwaa.service.errors import (
    AccessDeniedException,
    ResourceNotFoundException,
    RestApiException,
    ValidationException,
)
from openmwaa.service.identity import Caller
from openmwaa.service.tokens import airflow_user, check_serving, role_for
from openmwaa.store.db import Store
from openmwaa.store.status import REST_API

REST_API_TIMEOUT = 10.0
"""MWAA gives InvokeRestApi 10 seconds."""
_BODYLESS = ("GET", "HEAD", "DELETE")
API_CACHE_SECONDS = 30.0
"""How long InvokeRestApi reuses an environment's (API URL, role JWT) for one generation."""
STATE_CACHE_SECONDS = 1.0
"""How long InvokeRestApi may reuse an environment's status and configuration read from
the store; any environment write of this server drops it at once (``Store``), so only
another server sharing the store's database can be seen up to this late."""
_SCALAR = (str, int, float, bool)


class AirflowHttpError(Exception):
    """The request to Airflow failed after it may have been sent."""


class AirflowConnectError(AirflowHttpError):
    """No connection to Airflow could be made: the request was not sent."""


class AirflowAnswer(Protocol):
    """Airflow's answer as InvokeRestApi reads it."""

    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    def is_json(self) -> bool:
        """Whether ``content`` is a UTF-8 JSON document that may be passed on as it came."""
        ...

    def document(self) -> Any:
        """The body decoded: JSON, or ``{"detail": text}``."""
        ...


T = TypeVar("T")


class AirflowClient(Protocol, Generic[T]):
    """What InvokeRestApi needs of an HTTP client (``api.airflow_http.AirflowHttp``).

    ``request`` raises TimeoutError after REST_API_TIMEOUT, AirflowConnectError when
    nothing was sent, AirflowHttpError when the exchange failed.
    """

    def target(self, url: str, token: str) -> T:
        """A REST API base URL and the role's JWT, prepared for many calls
        (RuntimeFailure for a URL it cannot call)."""
        ...

    async def request(
        self, target: T, method: str, path: str, *, params: Any = None, json: Any = None
    ) -> AirflowAnswer: ...


def checked_path(path: Any) -> str:
    """The REST API path, absolute; ValidationException naming ``Path`` otherwise."""
    if not isinstance(path, str) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValidationException(
            "Path must be an Airflow REST API path such as /dags, without control characters "
            "(CR, LF, tab, ...)."
        )
    path = path if path.startswith("/") else "/" + path
    if ".." in path.split("/") or "?" in path or "#" in path:
        raise ValidationException(
            f"Path {path!r} must be an Airflow REST API path such as /dags, "
            "without '..', '?' or '#'; pass query parameters in QueryParameters."
        )
    return path


def checked_query(params: Any) -> dict[str, Any] | None:
    """QueryParameters as a flat JSON object of scalars or lists of scalars (repeated
    parameters); ValidationException naming ``QueryParameters`` otherwise."""
    if params is None or params == {}:
        return None
    problem = ""
    if not isinstance(params, dict):
        problem = f"it is a JSON {type(params).__name__}"
    else:
        for key, value in params.items():
            values = value if isinstance(value, list) else [value]
            if not all(v is None or isinstance(v, _SCALAR) for v in values):
                problem = f"the value of {key!r} is neither a scalar nor a list of scalars"
                break
    if problem:
        raise ValidationException(
            "QueryParameters must be a JSON object whose values are strings, numbers, "
            f'booleans or lists of them (e.g. {{"limit": 10}}); {problem}.'
        )
    return params


class RestApi:
    """InvokeRestApi against the environments' Airflow API servers."""

    def __init__(
        self,
        store: Store,
        environments: Environments,
        backend: Backend,
        client: AirflowClient[Any],
    ) -> None:
        self._store = store
        self._envs = environments
        self._backend = backend
        self._client = client
        self._cache: dict[tuple[str, str, int], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def _cached_target(self, key: tuple[str, str, int]) -> Any:
        with self._lock:
            hit = self._cache.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def _fetch_target(self, key: tuple[str, str, int], applied: dict[str, Any], fresh: bool) -> Any:
        """Ask the backend for the role's (base URL, JWT) and cache it; may block on Airflow."""
        now = time.monotonic()
        spec = self._envs.spec_of(key[0], applied)
        try:
            base, token = self._backend.airflow_api(spec, key[1], fresh=fresh)
        except RuntimeFailure as e:
            if e.code == "ACCESS_DENIED":
                raise AccessDeniedException(
                    f"The {key[1]} role has no access to Airflow's REST API."
                ) from None
            raise
        target = self._client.target(
            base + dialect_for(spec.airflow_version).rest_api_prefix, token
        )
        with self._lock:
            if len(self._cache) > 1000:
                self._cache.clear()
            self._cache[key] = (now + API_CACHE_SECONDS, target)
        return target

    async def _target(
        self, key: tuple[str, str, int], applied: dict[str, Any], *, fresh: bool
    ) -> Any:
        """The REST API target of the role, cached per environment generation.

        A cached target costs no thread hop; fetching one (``POST /auth/token`` to the
        environment) runs in a worker thread.
        """
        if not fresh:
            hit = self._cached_target(key)
            if hit is not None:
                return hit
        return await to_thread.run_sync(self._fetch_target, key, applied, fresh)

    async def invoke(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        """Call the environment's Airflow REST API as the caller's role, on the event loop.

        Authorization first (the role ARNs derive from the name), then the input, then
        the environment: one lean store read (reused for up to a second, and never across
        a write of this server). RuntimeFailure when the backend cannot reach Airflow.
        """
        name = p["Name"]
        role = role_for(self._envs, caller, name, "InvokeRestApi")
        airflow_user(name, role)  # Public: AccessDeniedException
        path = checked_path(p["Path"])
        params = checked_query(p.get("QueryParameters"))
        row = self._store.environment_state(name, max_age=STATE_CACHE_SECONDS)
        if row is None:
            raise ResourceNotFoundException(f"Environment {name} does not exist.")
        check_serving(row, REST_API)  # UNAVAILABLE too: a down Airflow answers 502
        assert row.applied is not None
        method = p["Method"]
        body = p.get("Body")
        send_body = body is not None and (method not in _BODYLESS or body != {})
        key = (name, role, row.generation)
        for attempt in (1, 2):
            target = await self._target(key, row.applied, fresh=attempt == 2)
            try:
                response = await self._client.request(
                    target, method, path, params=params, json=body if send_body else None
                )
            except TimeoutError:
                raise RestApiException(504, {"detail": "Airflow did not answer in 10 s"}) from None
            except AirflowConnectError as e:
                if attempt == 1:  # not sent; the API server may have moved: look it up again
                    continue
                raise RestApiException(502, {"detail": f"Airflow is unreachable: {e}"}) from None
            except AirflowHttpError as e:
                raise RestApiException(502, {"detail": f"Airflow is unreachable: {e}"}) from None
            if response.status_code == 401 and attempt == 1:
                continue  # a cached JWT the environment no longer accepts
            break
        if response.status_code < 400 and response.is_json():
            # Airflow's JSON (FastAPI's, always valid) goes on as it came: decoding it only
            # to encode it again would cost time in proportion to its size.
            answer: Any = RawJson(response.content)
        else:
            answer = response.document()
        if response.status_code >= 400:
            raise RestApiException(response.status_code, answer)
        return {"RestApiStatusCode": response.status_code, "RestApiResponse": answer}
