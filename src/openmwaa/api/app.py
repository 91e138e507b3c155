"""The ASGI application: every MWAA request is authenticated, routed, parsed,
validated and dispatched here, and every failure becomes an AWS error.

A plain ASGI callable rather than a framework router: the routes come from
botocore's model (protocol.py) and each request needs the raw path and body
for SigV4 anyway.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from anyio import to_thread
from botocore.model import OperationModel

from openmwaa.api import credentials, protocol, sigv4, workers
from openmwaa.api.asgi import BodyIncomplete, BodyTooLarge, Receive, Scope, Send, read_body
from openmwaa.api.provider import MwaaProvider
from openmwaa.api.validation import validate, validate_labels
from openmwaa.service.errors import InternalServerException, ServiceError, ValidationException
from openmwaa.service.identity import Identities

log = logging.getLogger(__name__)

INLINE_OPERATIONS = frozenset({"GetEnvironment", "ListEnvironments", "ListTagsForResource"})
"""Single indexed reads: answered on the event loop, since a hop to a worker thread
costs more than the read and, under load, waits on the GIL for milliseconds. The
provider's coroutines (InvokeRestApi) run on the loop too; every other operation
runs in a worker thread."""
MAX_BODY = 1024 * 1024
"""Larger bodies are refused: no MWAA request (nor a worker host's signed call) comes
near it; only the execution relay takes more (workers.MAX_BODY)."""
BODY_TIMEOUT = 30.0
"""Seconds a whole request body may take once the headers are in (the connection's idle
timeout, serving.py, closes one that stops sending sooner)."""
INLINE_BODY = 16 * 1024
"""Bodies up to this size are parsed and validated on the event loop (well under a
millisecond, since lengths are checked before patterns); larger ones in a worker thread."""
INLINE_HASH = 256 * 1024
"""Bodies up to this size are hashed for SigV4 on the event loop."""
SIGNING_NAME = "airflow"


class MwaaApi:
    def __init__(
        self,
        provider: MwaaProvider,
        identities: Identities,
        region: str,
        worker_routes: workers.WorkerRoutes | None = None,
        credential_routes: credentials.CredentialRoutes | None = None,
    ) -> None:
        self._provider = provider
        self._identities = identities
        self._region = region
        self._workers = worker_routes
        self._credentials = credential_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        request_id = str(uuid.uuid4())
        try:
            response = await self._handle(scope, receive, request_id)
        except ServiceError as e:
            response = protocol.serialize_error(e, request_id)
            if isinstance(e, _BodyUnread):
                response = _closing(response)
        except Exception:
            log.exception("request %s failed", request_id)
            response = protocol.serialize_error(
                InternalServerException(
                    f"The server failed to process the request; request id {request_id}."
                ),
                request_id,
            )
        status, headers, body = response
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers]
                + [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive, request_id: str) -> protocol.Response:
        """Authenticate from the headers, read the body, check the signature over it,
        authorize from the URI, and only then parse and validate the body: an unsigned
        request never has its body read, and a refused caller never has it validated."""
        headers = protocol.header_map(scope["headers"])
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        method = scope["method"]
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        worker_call = self._workers is not None and workers.is_worker_path(path)

        if self._workers is not None and worker_call and workers.is_execution_call(path):
            # Guarded by the task's JWT, checked by Airflow: a body without one is not read.
            if "authorization" not in headers and _has_body(headers):
                return _closing((401, _JSON, b'{"detail":"Not authenticated"}'))
            body = await self._body(receive, headers, workers.MAX_BODY)
            return await self._workers.execution(method, path, query, raw_headers, body)

        if self._credentials is not None and credentials.is_credentials_path(path):
            # Environments' processes, with their token (not SigV4): no body is read.
            response = await self._credentials.handle(method, path, headers)
            return _closing(response) if _has_body(headers) else response

        try:
            signed = sigv4.read_header(raw_headers, region=self._region, service=SIGNING_NAME)
            caller = await to_thread.run_sync(self._identities.caller, signed.access_key)
            if caller is None:
                raise sigv4.unknown_key()
        except sigv4.SignatureError as e:
            return _closing(protocol.error_response(e.code, e.status, e.message, request_id))
        body = await self._body(receive, headers, MAX_BODY)
        try:
            if len(body) > INLINE_HASH:
                await to_thread.run_sync(
                    sigv4.check_signature,
                    signed,
                    caller.secret_access_key,
                    method,
                    path,
                    query,
                    body,
                )
            else:
                sigv4.check_signature(signed, caller.secret_access_key, method, path, query, body)
        except sigv4.SignatureError as e:
            return protocol.error_response(e.code, e.status, e.message, request_id)

        if worker_call and self._workers is not None:
            return await self._workers.handle(method, path, body, caller, request_id)
        try:
            operation, labels = protocol.match(method, path)
        except protocol.UnknownOperation as e:
            return protocol.error_response("UnknownOperationException", 404, str(e), request_id)
        validate_labels(operation.input_shape, labels)
        self._provider.authorize_early(caller, operation.name, labels)
        if len(body) > INLINE_BODY:
            params = await to_thread.run_sync(_parse, operation, labels, query, headers, body)
        else:
            params = _parse(operation, labels, query, headers, body)
        coroutine = self._provider.async_handlers.get(operation.name)
        if coroutine is not None:
            output = await coroutine(caller, params)
        elif operation.name in INLINE_OPERATIONS:
            output = self._provider.handlers[operation.name](caller, params)
        else:
            handler = self._provider.handlers[operation.name]
            output = await to_thread.run_sync(handler, caller, params)
        return protocol.serialize_response(operation, output, request_id)

    async def _body(self, receive: Receive, headers: dict[str, str], limit: int) -> bytes:
        try:
            return await read_body(
                receive, limit, headers.get("content-length"), timeout=BODY_TIMEOUT
            )
        except BodyTooLarge:
            raise _BodyTooLarge(f"The request body is larger than {limit} bytes.") from None
        except BodyIncomplete:
            raise _RequestTimeout from None


_JSON = [("content-type", "application/json")]


class _BodyUnread(ServiceError):
    """Raised with the body (partly) unread: the answer closes the connection."""


class _BodyTooLarge(_BodyUnread, ValidationException):
    pass


class _RequestTimeout(_BodyUnread):
    """The body did not arrive in time (or the client left)."""

    code = "RequestTimeoutException"
    status = 408

    def __init__(self) -> None:
        super().__init__(f"The request body did not arrive within {BODY_TIMEOUT:.0f} s.")


def _parse(
    operation: OperationModel,
    labels: dict[str, str],
    query: str,
    headers: dict[str, str],
    body: bytes,
) -> dict[str, Any]:
    """The validated input; JSON parsing and validation are bounded by the body's size."""
    params = protocol.parse_request(operation, labels, query, headers, body)
    validate(operation.input_shape, params)
    return params


def _has_body(headers: dict[str, str]) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def _closing(response: protocol.Response) -> protocol.Response:
    """An answer given without reading the request's body: the connection is closed after
    it, instead of reading (and discarding) whatever body the client still sends."""
    status, headers, body = response
    return status, [*headers, ("connection", "close")], body
