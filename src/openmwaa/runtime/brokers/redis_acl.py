"""Redis: an ACL user per environment, confined to the environment's keys and channels.

Celery on Redis (kombu 5.x with ``global_keyprefix``) prefixes every key and pub/sub
channel it touches with the environment's ``<queue>:`` prefix: the queue lists, the
``_kombu.binding.*`` sets, ``unacked``/``unacked_index``/``unacked_mutex``, the
binding deadlines, and the ``/0.celery.pidbox`` fanout channel (results go to the
environment's PostgreSQL database, not Redis). So the user may touch ``~<prefix>*``
and ``&<prefix>*`` only, plus the one channel pattern a worker PSUBSCRIBEs to,
``<prefix>/<db>.celery.pidbox`` (Redis compares PSUBSCRIBE patterns with the user's
channel patterns literally, so a glob would not admit it). It may run every command
but the admin and dangerous ones (``+@all -@admin -@dangerous``, so new kombu releases
keep working), minus those that reveal other environments' key or channel names
without naming a key (SCAN, RANDOMKEY, DBSIZE, PUBSUB, CLIENT TRACKING) or act on the
whole server (SCRIPT FLUSH/KILL, FUNCTION, MEMORY). Redis checks commands run inside
Lua scripts against the same rules.

The control plane needs no Redis library for this: a few RESP commands on a socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import ssl
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from openmwaa.runtime import celery
from openmwaa.runtime.base import RuntimeFailure

DENIED = (
    "-scan",
    "-randomkey",
    "-dbsize",
    "-pubsub",
    "-client|tracking",
    "-script|flush",
    "-script|kill",
    "-function",
    "-memory",
)
"""Taken away after ``+@all -@admin -@dangerous``: commands that list other tenants'
names or touch the whole server, and that Celery never sends."""
TIMEOUT = 5.0


class RespError(Exception):
    """An error reply of the Redis server (``NOPERM ...``, ``WRONGPASS ...``)."""


class RespClient:
    """One RESP2 connection that logs in with a URL's credentials (tests use it too)."""

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        scheme, host, port = celery.broker_address(url)
        parts = urlsplit(url)
        sock = socket.create_connection((host, port), timeout=timeout)
        if scheme == "rediss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        sock.settimeout(timeout)
        self.sock = sock
        self.reader = sock.makefile("rb")
        try:
            if parts.password:
                user = unquote(parts.username) if parts.username else None
                password = unquote(parts.password)
                self.call("AUTH", *([user] if user else []), password)
            db = parts.path.strip("/")
            if db and db != "0":
                self.call("SELECT", db)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def call(self, *args: str) -> Any:
        """Send one command; its reply (str, int, None, list), RespError for an error."""
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self) -> Any:
        line = self.reader.readline(1 << 20)
        if not line.endswith(b"\r\n"):
            raise OSError("the Redis server closed the connection")
        kind, body = line[:1], line[1:-2].decode(errors="replace")
        if kind == b"+":
            return body
        if kind == b"-":
            raise RespError(body)
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            return self.reader.read(size + 2)[:-2].decode(errors="replace")
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise OSError("answered, but not as a Redis server")


def purge_keys(admin_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (a deleted environment's queue, bindings and
    unacked tasks), in this process: no environment's install ever sees the admin URL."""
    removed = 0
    with RespClient(admin_url) as client:
        cursor = "0"
        while True:
            cursor, keys = client.call(
                "SCAN", cursor, "MATCH", _glob_escape(prefix) + "*", "COUNT", "1000"
            )
            if keys:
                removed += int(client.call("UNLINK", *keys))
            if cursor == "0":
                return removed


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


PIDBOX_TOPIC = "/{db}.celery.pidbox"
"""kombu's pub/sub topic of Celery's remote-control fanout exchange (``celery.pidbox``),
after the key prefix, on database ``db``."""


def acl_rules(account: str, password: str, db: int = 0) -> list[str]:
    """The ``ACL SETUSER`` arguments of an environment's user: reset first, so applying
    them again leaves exactly these rules whatever was there (idempotent)."""
    raw = celery.redis_key_prefix(account)
    prefix = _glob_escape(raw)
    digest = hashlib.sha256(password.encode()).hexdigest()
    return [
        "reset",
        "on",
        f"#{digest}",  # the password's hash: the plain text never reaches ACL LIST
        f"~{prefix}*",
        f"&{prefix}*",
        # Literal, as the worker sends it: PSUBSCRIBE patterns are compared as strings.
        "&" + raw + PIDBOX_TOPIC.format(db=db),
        "+@all",
        "-@admin",
        "-@dangerous",
        *DENIED,
    ]


class RedisAcl:
    """Environment users on the server's Redis (6 or newer), made with its admin URL."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        db = urlsplit(admin_url).path.strip("/")
        # The database the environments use: kombu puts it in its pub/sub topics.
        self.db = int(db) if db.isdigit() else 0

    def url_for(self, account: str, password: str) -> str:
        parts = urlsplit(self.admin_url)
        _, host, port = celery.broker_address(self.admin_url)
        where = f"[{host}]" if ":" in host else host
        netloc = f"{quote(account, safe='')}:{quote(password, safe='')}@{where}:{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def _admin(self, what: str, command: tuple[str, ...], *, save: bool = False) -> Any:
        """One admin command; with ``save``, the users are written to the server's ACL
        file when it has one (otherwise they live until it restarts, and health checks
        make them again)."""
        try:
            with RespClient(self.admin_url) as client:
                reply = client.call(*command)
                if save:
                    with contextlib.suppress(RespError):  # no aclfile: nothing to save to
                        client.call("ACL", "SAVE")
                return reply
        except RespError as exc:
            hint = " (Redis 6 or newer is needed)" if "unknown command" in str(exc) else ""
            raise RuntimeFailure(
                "BROKER_FAILED",
                f"{what} on the Redis broker {celery.redacted(self.admin_url)} failed: "
                f"{str(exc)[:200]}{hint}",
            ) from exc
        except OSError as exc:
            raise RuntimeFailure(
                "BROKER_UNREACHABLE",
                f"the Celery broker {celery.redacted(self.admin_url)} is unreachable "
                f"({exc.strerror or exc}) while {what}",
            ) from exc

    def check(self) -> None:
        """RuntimeFailure unless the admin URL's user may manage ACL users."""
        self._admin(
            "listing ACL users (the broker URL's user must be a Redis admin)", ("ACL", "USERS")
        )

    def ensure(self, account: str, password: str) -> None:
        rules = acl_rules(account, password, self.db)
        self._admin(
            "creating the environment's ACL user", ("ACL", "SETUSER", account, *rules), save=True
        )

    def remove(self, account: str) -> None:
        """``ACL DELUSER`` (Redis also disconnects the user's clients)."""
        self._admin("removing the environment's ACL user", ("ACL", "DELUSER", account), save=True)
