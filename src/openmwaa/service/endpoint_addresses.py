"""Where each environment's endpoint listens, and the hostname clients are given for it.

Every environment gets one port of its own for its life (persisted in
``<data-dir>/endpoints.json``, so a restarted control plane serves it at the
same URL and Airflow's ``[api] base_url`` stays true). WebserverAccessMode
picks the addresses: PRIVATE_ONLY the control plane's own (``--host``,
loopback by default), PUBLIC_ONLY the public one (``--public-host``), and
PUBLIC_AND_PRIVATE both.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FIRST_PORT = 18800
LAST_PORT = 19799
ANY_ADDRESS = ("0.0.0.0", "::", "")


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
        self._path = data_dir / "endpoints.json"
        self.private_host = private_host
        self.public_host = public_host
        self._first = first_port
        self._last = last_port
        self._lock = threading.Lock()
        self._ports: dict[str, int] = self._load()
        self._warned = False

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._ports, indent=1, sort_keys=True))
        os.replace(tmp, self._path)

    def port(self, name: str) -> int:
        """The environment's endpoint port, allocated (and persisted) on first use."""
        with self._lock:
            found = self._ports.get(name)
            if found is not None:
                return found
            taken = set(self._ports.values())
            for candidate in range(self._first, self._last + 1):
                if candidate in taken:
                    continue
                hosts = {self.private_host, self.public_host or self.private_host}
                if all(port_is_free(h, candidate) for h in hosts):
                    self._ports[name] = candidate
                    self._save()
                    return candidate
            raise RuntimeError(f"no free endpoint port left in {self._first}-{self._last}")

    def known(self) -> dict[str, int]:
        with self._lock:
            return dict(self._ports)

    def release(self, name: str) -> None:
        with self._lock:
            if self._ports.pop(name, None) is not None:
                self._save()

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
