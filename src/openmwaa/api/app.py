"""The ASGI application: every MWAA request is authenticated, routed, parsed,
validated and dispatched here, and every failure becomes an AWS error.

A plain ASGI callable rather than a framework router: the routes come from
botocore's model (protocol.py) and each request needs the raw path and body
for SigV4 anyway.
"""

from __future__ import annotations

import logging
import uuid

from anyio import to_thread

from openmwaa.api import protocol, sigv4, workers
from openmwaa.api.asgi import BodyTooLarge, Receive, Scope, Send, read_body
from openmwaa.api.provider import MwaaProvider
from openmwaa.api.validation import validate
from openmwaa.service.errors import (
    AccessDeniedException,
    InternalServerException,
    ServiceError,
    ValidationException,
)
from openmwaa.service.identity import Caller, Identities

log = logging.getLogger(__name__)

INLINE_OPERATIONS = frozenset({"GetEnvironment", "ListEnvironments", "ListTagsForResource"})
"""Single indexed reads: answered on the event loop, since a hop to a worker thread
costs more than the read and, under load, waits on the GIL for milliseconds. The
provider's coroutines (InvokeRestApi) run on the loop too; every other operation
runs in a worker thread."""
MAX_BODY = 1024 * 1024
"""Larger bodies are refused: no MWAA request comes near it."""
SIGNING_NAME = "airflow"


class MwaaApi:
    def __init__(
        self,
        provider: MwaaProvider,
        identities: Identities,
        region: str,
        worker_routes: workers.WorkerRoutes | None = None,
    ) -> None:
        self._provider = provider
        self._identities = identities
        self._region = region
        self._workers = worker_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        request_id = str(uuid.uuid4())
        try:
            response = await self._handle(scope, receive, request_id)
        except ServiceError as e:
            response = protocol.serialize_error(e, request_id)
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
        headers = protocol.header_map(scope["headers"])
        raw_path = scope.get("raw_path") or scope["path"].encode()
        raw_path_text = raw_path.decode("latin-1")
        worker_call = workers.is_worker_path(raw_path_text)
        limit = workers.MAX_BODY if worker_call else MAX_BODY
        try:
            body = await read_body(receive, limit, headers.get("content-length"))
        except BodyTooLarge:
            raise ValidationException(f"The request body is larger than {limit} bytes.") from None
        raw_query = scope.get("query_string", b"").decode("latin-1")
        method = scope["method"]
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]

        async def authenticate() -> Caller:
            return self._authenticate(method, raw_path_text, raw_query, raw_headers, body)

        if worker_call and self._workers is not None:
            return await self._workers.handle(
                method, raw_path_text, raw_query, raw_headers, body, authenticate, request_id
            )
        caller = await authenticate()
        try:
            operation, labels = protocol.match(method, raw_path_text)
        except protocol.UnknownOperation as e:
            return protocol.error_response("UnknownOperationException", 404, str(e), request_id)
        params = protocol.parse_request(operation, labels, raw_query, headers, body)
        validate(operation.input_shape, params)
        coroutine = self._provider.async_handlers.get(operation.name)
        if coroutine is not None:
            output = await coroutine(caller, params)
        elif operation.name in INLINE_OPERATIONS:
            output = self._provider.handlers[operation.name](caller, params)
        else:
            handler = self._provider.handlers[operation.name]
            output = await to_thread.run_sync(handler, caller, params)
        return protocol.serialize_response(operation, output, request_id)

    def _authenticate(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
    ) -> Caller:
        """The caller whose key signed the request (SigV4); AccessDeniedException otherwise."""
        try:
            key_id = sigv4.verify(
                method,
                path,
                query,
                headers,
                body,
                region=self._region,
                service=SIGNING_NAME,
                lookup_secret=self._secret,
            )
        except sigv4.SignatureError as e:
            raise AccessDeniedException(e.message) from None
        caller = self._identities.caller(key_id)
        if caller is None:  # deleted between the two look-ups
            raise AccessDeniedException("The security token included in the request is invalid.")
        return caller

    def _secret(self, access_key_id: str) -> str | None:
        caller = self._identities.caller(access_key_id)
        return caller.secret_access_key if caller else None
