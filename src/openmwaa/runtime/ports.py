"""Port allocation: every environment keeps its ports across restarts, none collide.

The one registry of the server: Airflow's ports (API server, log servers) and each
environment's endpoint (service/endpoint_addresses.py) are persisted together in
``<data-dir>/ports.json`` under a file lock, so no two ever get the same port, and a
restarted control plane gives an environment its old ports. The file is read strictly
(a damaged one is a StateFileError naming it, never a silent reset that would move
every environment's WebserverUrl) and written durably.
"""

from __future__ import annotations

import fcntl
import hashlib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from openmwaa.core.files import StateFileError, read_json, write_json
from openmwaa.runtime.config import Ports

FIRST_PORT = 28100
LAST_PORT = 48999
_NAMES = ("api", "worker_log", "trigger_log")


Registry = dict[str, dict[str, int]]
"""environment -> {port name -> port}."""


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

    def read(self) -> Registry:
        """Every allocation; StateFileError when ports.json exists but is damaged."""
        data = read_json(self.path) or {}
        for env, entry in data.items():
            if not isinstance(entry, dict) or not all(
                isinstance(port, int) for port in entry.values()
            ):
                raise StateFileError(self.path, f"the entry of {env!r} is not a map of ports")
        return data

    @contextmanager
    def locked(self) -> Iterator[Registry]:
        """The allocations, to change in place: written back (durably) when the block ends
        without an exception, under the file lock all the while."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            before = {env: dict(entry) for env, entry in data.items()}
            yield data
            if data != before:
                write_json(self.path, data, 0o600)

    def get(self, env: str) -> Ports | None:
        """The environment's ports, if allocated (read only: health checks call this often)."""
        found = self.read().get(env)
        if not found or not all(n in found for n in _NAMES):
            return None
        return Ports(**{n: found[n] for n in _NAMES})

    def allocate(self, env: str, *, replace_busy: bool = False) -> Ports:
        """The environment's ports; new ones for those busy when ``replace_busy``."""
        with self.locked() as data:
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

    def named_port(
        self,
        env: str,
        key: str,
        *,
        replace_busy: bool = True,
        first: int | None = None,
        last: int = LAST_PORT,
        is_free: Callable[[int], bool] = port_is_free,
        also_taken: set[int] | None = None,
    ) -> int:
        """One more port of the environment, named ``key`` (a worker's log server, the
        endpoint), kept across restarts.

        The recorded port when there is one; a new one when ``replace_busy`` and something
        listens on the recorded port (for a worker about to start). For a worker that runs
        already (being adopted), pass ``replace_busy=False``: it listens on its port itself.
        A new port is searched in ``first``..``last`` (default: Airflow's range, from this
        data dir's offset), is free by ``is_free`` and is in no allocation nor ``also_taken``.
        """
        with self.locked() as data:
            current = data.setdefault(env, {})
            if key in current and (not replace_busy or is_free(current[key])):
                return int(current[key])
            taken = {p for entry in data.values() for p in entry.values()} | (also_taken or set())
            low = FIRST_PORT if first is None else first
            start = self._first if first is None else first
            span = last - low + 1
            for step in range(span):
                candidate = low + (start - low + step) % span
                if candidate not in taken and is_free(candidate):
                    current[key] = candidate
                    return candidate
        raise RuntimeError(f"no free port left in {low}-{last}")

    def named(self, key: str) -> dict[str, int]:
        """Environment -> its port named ``key``, for those that have one."""
        return {env: entry[key] for env, entry in self.read().items() if key in entry}

    def release_named(self, env: str, key: str) -> None:
        """Forget one port of the environment (the others stay)."""
        with self.locked() as data:
            entry = data.get(env)
            if entry is not None and entry.pop(key, None) is not None and not entry:
                del data[env]

    def release(self, env: str) -> None:
        with self.locked() as data:
            data.pop(env, None)
