"""What every part of the environment gateway shares: early replies, headers, the domain."""

from __future__ import annotations

import json
from typing import Any, Protocol

from openmwaa.api.asgi import Scope, Send
from openmwaa.runtime.base import AirflowCli
from openmwaa.service.airflow3 import AirflowDialect
from openmwaa.service.tokens import Session


class Domain(Protocol):
    """What the gateway asks of the domain (``service.endpoint.Endpoint``); each call may
    block on the store or on Airflow, so the gateway makes it in a worker thread."""

    def airflow_base(self, name: str) -> tuple[str, AirflowDialect] | None: ...

    def web_session(self, name: str, token: str) -> Session: ...

    def cli(self, name: str, token: str) -> AirflowCli: ...


class Reply(Exception):
    """A complete answer decided early (errors, refusals, small pages)."""

    def __init__(
        self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]] | None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


def json_reply(status: int, payload: dict[str, Any], **headers: str) -> Reply:
    extra = [(k.replace("_", "-"), v) for k, v in headers.items()]
    return Reply(status, json.dumps(payload).encode(), "application/json", extra)


def html_reply(status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, body, "text/html; charset=utf-8", headers)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def send_whole(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers]
            + [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
