"""RabbitMQ: a virtual host and a user per environment, through the management HTTP API.

A virtual host is RabbitMQ's own wall between tenants: queues, exchanges and bindings
of one are invisible in another, and a user reaches only the virtual hosts it has
permissions on. Each environment's user has every permission on its own virtual host
and none elsewhere, and no management tags (it cannot use the management API). Deleting
the virtual host deletes the environment's queues and messages with it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

from openmwaa.runtime import celery
from openmwaa.runtime.base import RuntimeFailure

TIMEOUT = 10.0


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


class RabbitAccounts:
    """Environment virtual hosts and users, made with the management API's admin login."""

    def __init__(self, broker_url: str, management_url: str) -> None:
        parts = urlsplit(management_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RuntimeFailure(
                "CONFIGURATION",
                "--rabbitmq-management-url must be http(s)://USER:PASSWORD@HOST:15672",
            )
        self.broker_url = broker_url
        self.where = _redacted(management_url)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = f"{host}:{parts.port}" if parts.port else host
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/api", "", ""))
        self.auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))

    def url_for(self, account: str, password: str) -> str:
        parts = urlsplit(self.broker_url)
        _, host, port = celery.broker_address(self.broker_url)
        where = f"[{host}]" if ":" in host else host
        netloc = f"{quote(account, safe='')}:{quote(password, safe='')}@{where}:{port}"
        return urlunsplit((parts.scheme, netloc, "/" + quote(account, safe=""), parts.query, ""))

    def _call(self, method: str, path: str, body: Any = None, missing_ok: bool = False) -> Any:
        try:
            with httpx.Client(auth=self.auth, timeout=TIMEOUT, trust_env=False) as http:
                resp = http.request(method, self.base + path, json=body)
        except httpx.HTTPError as exc:
            raise RuntimeFailure(
                "BROKER_UNREACHABLE",
                f"the RabbitMQ management API at {self.where} is unreachable ({exc})",
            ) from exc
        if missing_ok and resp.status_code == 404:
            return None
        if resp.status_code >= 300:
            raise RuntimeFailure(
                "BROKER_FAILED",
                f"the RabbitMQ management API at {self.where} answered {method} "
                f"{path.split('/')[1]}: HTTP {resp.status_code} {resp.text[:200]}",
            )
        return resp.json() if resp.content else None

    def check(self) -> None:
        """RuntimeFailure unless the management login is an administrator."""
        me = self._call("GET", "/whoami") or {}
        tags = me.get("tags") or []
        tags = tags.split(",") if isinstance(tags, str) else tags
        if "administrator" not in tags:
            raise RuntimeFailure(
                "CONFIGURATION",
                f"the RabbitMQ management user {me.get('name')!r} is not an administrator: "
                "it cannot make a virtual host and user per environment",
            )

    def ensure(self, account: str, password: str) -> None:
        vhost, user = quote(account, safe=""), quote(account, safe="")
        self._call("PUT", f"/vhosts/{vhost}", {"description": "an openmwaa environment"})
        self._call("PUT", f"/users/{user}", {"password": password, "tags": ""})
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        self._call("PUT", f"/permissions/{vhost}/{user}", everything)

    def remove(self, account: str) -> None:
        name = quote(account, safe="")
        self._call("DELETE", f"/vhosts/{name}", missing_ok=True)
        self._call("DELETE", f"/users/{name}", missing_ok=True)

    def vhost_exists(self, account: str) -> bool:
        return self._call("GET", f"/vhosts/{quote(account, safe='')}", missing_ok=True) is not None
