"""The routes ``openmwaa worker`` uses on the control plane's API port.

``/openmwaa/workers/{name}/bundle`` (GET), ``/files`` (GET) and ``/report``
(POST) are SigV4-signed like every MWAA call and allowed by
``airflow:RunWorkers`` on the environment. ``/openmwaa/workers/{name}/execution/{secret}/...``
passes a task's calls on to the environment's Airflow execution API: the environment's
ports stay on loopback, workers on other hosts reach Airflow through here. Two checks
guard it: the environment's relay secret in the path (given to its worker hosts in the
signed bundle, compared here in constant time), and the task's JWT (issued by the
scheduler for that one task, checked by Airflow). A token taken from another
environment's broker messages is refused without that environment's secret, and one
environment's secret opens no other environment.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import httpx
from anyio import to_thread

from openmwaa.api import protocol
from openmwaa.api.asgi import HOP_BY_HOP
from openmwaa.service.errors import ServiceError, ValidationException
from openmwaa.service.identity import Caller
from openmwaa.service.worker_hosts import RelayRefused, WorkerHosts

PREFIX = "/openmwaa/workers/"
MAX_BODY = 16 * 1024 * 1024
"""Task calls may carry XCom values: a larger limit than the MWAA API's."""
EXECUTION_TIMEOUT = 60.0
_NOT_RELAYED = HOP_BY_HOP | {b"content-length", b"content-encoding", b"accept-encoding"}
"""Connection headers, and what the relay sets itself: the length of what it sends, and
no compression (httpx decodes what it receives)."""
_JSON = [("content-type", "application/json")]
_UNREACHABLE = b'{"detail":"the environment\'s execution API is not reachable"}'


def is_worker_path(path: str) -> bool:
    return path.startswith(PREFIX)


def is_execution_call(path: str) -> bool:
    """Whether ``path`` is a task's call to the execution API (not SigV4-signed)."""
    parts = path[len(PREFIX) :].split("/", 2)
    return is_worker_path(path) and len(parts) >= 2 and parts[1] == "execution"


class WorkerRoutes:
    def __init__(self, hosts: WorkerHosts) -> None:
        self._hosts = hosts
        self._http = httpx.AsyncClient(
            timeout=EXECUTION_TIMEOUT,
            trust_env=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def handle(
        self, method: str, path: str, body: bytes, caller: Caller, request_id: str
    ) -> protocol.Response:
        """A signed call (bundle, files, report) of an authenticated caller."""
        name, _, rest = path[len(PREFIX) :].partition("/")
        route = (method, rest)
        if route == ("GET", "bundle"):
            answer = await to_thread.run_sync(self._hosts.bundle, caller, name)
            return _json(answer, request_id)
        if route == ("GET", "files"):
            data = await to_thread.run_sync(self._hosts.files, caller, name)
            return 200, [("content-type", "application/gzip")], data
        if route == ("POST", "report"):
            report = _report(body)
            answer = await to_thread.run_sync(lambda: self._hosts.report(caller, name, **report))
            return _json(answer, request_id)
        return protocol.error_response(
            "UnknownOperationException", 404, f"No worker route {method} {path}.", request_id
        )

    async def execution(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
    ) -> protocol.Response:
        """Relay a task's call (see :func:`is_execution_call`) to its environment's Airflow.

        A wrong or missing secret and an unknown environment get the same 403, so a caller
        without the secret learns nothing about which environments exist.
        """
        name, _, secret, rest = (path[len(PREFIX) :].split("/", 3) + ["", ""])[:4]
        segments = unquote(rest).split("/")
        if rest.startswith("/") or any(s in (".", "..") for s in segments):
            return 400, _JSON, b'{"detail":"bad path"}'
        try:
            base = await to_thread.run_sync(self._hosts.relay_target, name, secret)
        except RelayRefused:
            return 403, _JSON, b'{"detail":"Forbidden"}'
        except ServiceError:
            return 503, _JSON, _UNREACHABLE
        try:
            response = await self._http.request(
                method,
                base + rest + (f"?{query}" if query else ""),
                headers=[(k, v) for k, v in headers if k.lower().encode() not in _NOT_RELAYED],
                content=body,
            )
        except httpx.HTTPError:
            return 503, _JSON, _UNREACHABLE
        out = [
            (k, v) for k, v in response.headers.items() if k.lower().encode() not in _NOT_RELAYED
        ]
        return response.status_code, out, response.content


def _json(answer: dict[str, Any], request_id: str) -> protocol.Response:
    headers = [("content-type", "application/json"), ("x-amzn-requestid", request_id)]
    return 200, headers, json.dumps(answer).encode()


def _report(body: bytes) -> dict[str, Any]:
    """The report's fields, checked: Host (str), Limit, Workers, Busy (ints >= 0).

    ``Limit`` is the host's own ``--max-workers``, required and passed on as ``limit``:
    WorkerHosts caps what the host says it runs (``workers``, ``busy``) and what it is
    given by it, so a report without it is refused rather than read as unlimited or 0.
    """
    try:
        raw = json.loads(body or b"{}")
    except ValueError:
        raise ValidationException("The report must be a JSON object.") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("Host"), str):
        raise ValidationException("The report must be a JSON object with a Host string.")
    if "Limit" not in raw:
        raise ValidationException("The report must carry Limit, the host's --max-workers.")
    counts = {}
    for field in ("Limit", "Workers", "Busy"):
        value = raw.get(field, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValidationException(f"{field} must be a whole number >= 0 (got {value!r}).")
        counts[field.lower()] = value
    return {"host": raw["Host"], **counts}
