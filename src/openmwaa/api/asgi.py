"""The few ASGI pieces both of the server's apps (the MWAA API and the gateway) need."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
"""Headers of one connection, never passed on by a proxy (lower-case)."""


class BodyError(Exception):
    """The request body cannot be had; the subclasses say why."""


class BodyTooLarge(BodyError):
    pass


class BodyIncomplete(BodyError):
    """The client left, or did not send the whole body within the time allowed."""


async def read_body(
    receive: Receive, limit: int, declared: str | None = None, *, timeout: float | None = None
) -> bytes:
    """The whole request body; BodyTooLarge as soon as it (or its Content-Length) passes limit.

    With ``timeout`` (seconds for the whole body), a body not complete by then, or a
    client gone before its end, raises BodyIncomplete: a stalled upload then holds
    neither memory nor the handler for long. Without it a disconnect ends the body
    (what the gateway expects).
    """
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    if timeout is None:
        return await _read(receive, limit, strict=False)
    try:
        async with asyncio.timeout(timeout):
            return await _read(receive, limit, strict=True)
    except TimeoutError:
        raise BodyIncomplete from None


async def _read(receive: Receive, limit: int, *, strict: bool) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if strict:
                raise BodyIncomplete
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)
