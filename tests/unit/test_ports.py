"""PortRegistry.named_port: a worker's log-server port, kept across restarts and adoption."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openmwaa.runtime.ports import FIRST_PORT, LAST_PORT, PortRegistry, port_is_free


@contextmanager
def listening(port: int) -> Iterator[None]:
    """Something listens on ``port`` (as a running worker's log server would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", port))
        sock.listen()
        yield


def recorded(data_dir: Path, env: str, key: str) -> int:
    return json.loads((data_dir / "ports.json").read_text())[env][key]


def test_named_port_is_recorded_and_kept(tmp_path: Path) -> None:
    registry = PortRegistry(tmp_path)
    port = registry.named_port("etl", "worker-1")
    assert FIRST_PORT <= port <= LAST_PORT
    assert recorded(tmp_path, "etl", "worker-1") == port
    assert registry.named_port("etl", "worker-1") == port
    # A restarted control plane on the same data dir gives the worker its old port.
    assert PortRegistry(tmp_path).named_port("etl", "worker-1") == port


def test_named_ports_never_collide(tmp_path: Path) -> None:
    registry = PortRegistry(tmp_path)
    taken = set(registry.allocate("etl").__dict__.values())
    taken |= set(registry.allocate("other").__dict__.values())
    for key in ("worker-1", "worker-2"):
        port = registry.named_port("etl", key)
        assert port not in taken
        taken.add(port)
    assert registry.named_port("other", "worker-1") not in taken


def test_busy_recorded_port_is_replaced_for_a_new_worker(tmp_path: Path) -> None:
    registry = PortRegistry(tmp_path)
    port = registry.named_port("etl", "worker-1")
    with listening(port):
        new = registry.named_port("etl", "worker-1")
        assert new != port
        assert port_is_free(new)
    assert recorded(tmp_path, "etl", "worker-1") == new


def test_busy_recorded_port_is_kept_when_adopting(tmp_path: Path) -> None:
    registry = PortRegistry(tmp_path)
    port = registry.named_port("etl", "worker-1")
    with listening(port):  # the adopted worker itself listens on its port
        assert registry.named_port("etl", "worker-1", replace_busy=False) == port
    assert recorded(tmp_path, "etl", "worker-1") == port


def test_unrecorded_worker_gets_a_free_port_when_adopting(tmp_path: Path) -> None:
    registry = PortRegistry(tmp_path)
    taken = set(registry.allocate("etl").__dict__.values())
    port = registry.named_port("etl", "worker-3", replace_busy=False)
    assert port not in taken
    assert recorded(tmp_path, "etl", "worker-3") == port
