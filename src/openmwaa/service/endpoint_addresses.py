"""Where each environment's endpoint listens, and the hostname clients are given for it.

Every environment gets one port of its own for its life, recorded as its
``endpoint`` port in the server's one port registry (``<data-dir>/ports.json``,
runtime/ports.py, beside Airflow's ports), so a restarted control plane serves it
at the same URL and Airflow's ``[api] base_url`` stays true. A new port is one
nothing listens on; when another process takes it anyway, the gateway calls
:meth:`EndpointAddresses.reassign` rather than report a URL that answers for
someone else. WebserverAccessMode picks the addresses: PRIVATE_ONLY the control
plane's own (``--host``, loopback by default), PUBLIC_ONLY the public one
(``--public-host``), and PUBLIC_AND_PRIVATE both.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from openmwaa.core.files import StateFileError, read_json
from openmwaa.runtime.ports import PortRegistry

log = logging.getLogger(__name__)

FIRST_PORT = 18800
LAST_PORT = 19799
ANY_ADDRESS = ("0.0.0.0", "::", "")
KEY = "endpoint"
"""The endpoint's name among an environment's ports in the registry."""
LEGACY_FILE = "endpoints.json"
"""Where earlier releases kept endpoint ports: merged into the registry once."""


def _advertised(host: str) -> str:
    return "127.0.0.1" if host in ANY_ADDRESS else host


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host or "0.0.0.0", port))
    except OSError:
        return False
    return True


class EndpointAddresses:
    def __init__(
        self,
        data_dir: Path,
        private_host: str,
        public_host: str | None = None,
        *,
        first_port: int = FIRST_PORT,
        last_port: int = LAST_PORT,
    ) -> None:
        self.private_host = private_host
        self.public_host = public_host
        self._first = first_port
        self._last = last_port
        self._registry = PortRegistry(data_dir)
        self._lock = threading.Lock()
        self._merge_legacy(data_dir / LEGACY_FILE)
        self._ports: dict[str, int] = self._registry.named(KEY)
        """This server's view of the endpoint ports (it alone changes them: one server per
        data dir), so the URL in GetEnvironment costs no file read."""
        self._warned = False
        self._move_busy()

    def _move_busy(self) -> None:
        """At start nothing of ours listens yet: a recorded port that is busy is another
        process's, and is replaced before any WebserverUrl names it."""
        for name, port in sorted(self._ports.items()):
            if not self._is_free(port):
                new = self.reassign(name)
                log.warning(
                    "environment %s: endpoint port %d is held by another process; moved to port %d",
                    name,
                    port,
                    new,
                )

    def _merge_legacy(self, path: Path) -> None:
        legacy = read_json(path)
        if legacy is None:
            return
        if not all(isinstance(port, int) for port in legacy.values()):
            raise StateFileError(path, "holds something other than ports")
        with self._registry.locked() as data:
            for name, port in legacy.items():
                data.setdefault(name, {}).setdefault(KEY, port)
        path.unlink()

    def _is_free(self, port: int) -> bool:
        hosts = {self.private_host, self.public_host or self.private_host}
        return all(port_is_free(h, port) for h in hosts)

    def _allocate(self, name: str, *, replace_busy: bool) -> int:
        port = self._registry.named_port(
            name,
            KEY,
            replace_busy=replace_busy,
            first=self._first,
            last=self._last,
            is_free=self._is_free,
            also_taken={p for n, p in self._ports.items() if n != name},
        )
        self._ports[name] = port
        return port

    def port(self, name: str) -> int:
        """The environment's endpoint port, allocated (free, and persisted) on first use."""
        with self._lock:
            found = self._ports.get(name)
            if found is not None:
                return found
            return self._allocate(name, replace_busy=False)

    def reassign(self, name: str) -> int:
        """Another process holds the environment's port (binding it failed): a new, free
        one, persisted; the environment's WebserverUrl changes to it."""
        with self._lock:
            self._registry.release_named(name, KEY)
            self._ports.pop(name, None)
            return self._allocate(name, replace_busy=True)

    def known(self) -> dict[str, int]:
        with self._lock:
            return dict(self._ports)

    def release(self, name: str) -> None:
        with self._lock:
            if self._ports.pop(name, None) is not None:
                self._registry.release_named(name, KEY)

    def bind_hosts(self, access_mode: str) -> list[str]:
        """The addresses the endpoint listens on for ``access_mode``."""
        public = self.public_host
        if access_mode in ("PUBLIC_ONLY", "PUBLIC_AND_PRIVATE") and public is None:
            if not self._warned:
                log.warning(
                    "an environment asks for a public web server but no --public-host is set: "
                    "serving it on %s",
                    self.private_host,
                )
                self._warned = True
            return [self.private_host]
        if access_mode == "PUBLIC_ONLY":
            return [str(public)]
        if access_mode == "PUBLIC_AND_PRIVATE":
            return list(dict.fromkeys([str(public), self.private_host]))
        return [self.private_host]

    def hostname(self, name: str, access_mode: str) -> str:
        """``HOST:PORT`` as CreateCliToken/CreateWebLoginToken give it (WebServerHostname)."""
        host = self.bind_hosts(access_mode)[0]
        return f"{_bracketed(_advertised(host))}:{self.port(name)}"

    def url(self, name: str, access_mode: str) -> str:
        return f"http://{self.hostname(name, access_mode)}"
