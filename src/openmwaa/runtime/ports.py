"""Port allocation: every environment keeps its ports across restarts, none collide.

Allocations are persisted in ``<data-dir>/ports.json`` under a file lock, so
two environments (or two control planes on the same data dir) never get the
same port, and a restarted control plane gives an environment its old ports.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openmwaa.runtime.config import Ports

FIRST_PORT = 28100
LAST_PORT = 48999
_NAMES = ("api", "worker_log", "trigger_log")


def port_is_free(port: int) -> bool:
    """True when nothing listens on ``port`` (the log servers bind every interface)."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                # As servers bind: TIME_WAIT leftovers of a stopped component don't count.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((addr, port))
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 here
                continue
            return False
    return True


class PortRegistry:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "ports.json"
        # Control planes on other data dirs start their search elsewhere in the range, so
        # they rarely meet on a port one has allocated but is not listening on right now.
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).digest()
        self._first = FIRST_PORT + int.from_bytes(digest[:4]) % 200 * 100

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, int]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text()) if self.path.exists() else {}
            except ValueError:
                data = {}
            yield data
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)

    def get(self, env: str) -> Ports | None:
        """The environment's ports, if allocated (read only: health checks call this often)."""
        try:
            found = json.loads(self.path.read_text()).get(env)
        except (OSError, ValueError):
            return None
        return Ports(**{n: found[n] for n in _NAMES}) if found else None

    def allocate(self, env: str, *, replace_busy: bool = False) -> Ports:
        """The environment's ports; new ones for those busy when ``replace_busy``."""
        with self._locked() as data:
            current = dict(data.get(env, {}))
            taken = {p for name, entry in data.items() if name != env for p in entry.values()}
            taken |= {p for name, p in current.items() if name not in _NAMES}
            candidate = self._first
            tried = 0
            for name in _NAMES:
                port = current.get(name)
                if port and port not in taken and (not replace_busy or port_is_free(port)):
                    taken.add(port)
                    continue
                while candidate in taken or not port_is_free(candidate):
                    candidate = FIRST_PORT if candidate >= LAST_PORT else candidate + 1
                    tried += 1
                    if tried > LAST_PORT - FIRST_PORT:
                        raise RuntimeError("no free port left for Airflow environments")
                current[name] = candidate
                taken.add(candidate)
            data[env] = current
        return Ports(**{n: current[n] for n in _NAMES})

    def named_port(self, env: str, key: str, *, replace_busy: bool = True) -> int:
        """One more port of the environment, named ``key`` (a worker's log server), kept
        across restarts.

        The recorded port when there is one; a new one when ``replace_busy`` and something
        listens on the recorded port (for a worker about to start). For a worker that runs
        already (being adopted), pass ``replace_busy=False``: it listens on its port itself.
        """
        with self._locked() as data:
            current = data.setdefault(env, {})
            if key in current and (not replace_busy or port_is_free(current[key])):
                return int(current[key])
            taken = {p for entry in data.values() for p in entry.values()}
            candidate = self._first
            for _ in range(LAST_PORT - FIRST_PORT):
                candidate = FIRST_PORT if candidate >= LAST_PORT else candidate + 1
                if candidate not in taken and port_is_free(candidate):
                    current[key] = candidate
                    return candidate
        raise RuntimeError("no free port left for Airflow environments")

    def release(self, env: str) -> None:
        with self._locked() as data:
            data.pop(env, None)
