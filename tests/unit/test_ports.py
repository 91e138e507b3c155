"""The server's one port registry: Airflow's ports, workers' log-server ports (kept across
restarts and adoption) and endpoint ports; read strictly, never silently reset."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from openmwaa.core.files import StateFileError
from openmwaa.runtime.ports import FIRST_PORT, LAST_PORT, PortRegistry, port_is_free
from openmwaa.service.endpoint_addresses import EndpointAddresses

EP_FIRST, EP_LAST = 19700, 19799


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


# -- one registry, read strictly; endpoint ports ---------------------------------------------


def held(port: int, host: str = "127.0.0.1") -> socket.socket:
    """Another process's listener on ``port`` (closed by the caller)."""
    sock = socket.socket()
    sock.bind((host, port))
    sock.listen()
    return sock


def addresses(data_dir: Path) -> EndpointAddresses:
    return EndpointAddresses(data_dir, "127.0.0.1", first_port=EP_FIRST, last_port=EP_LAST)


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"etl": {"api": "x"}}', ""])
def test_damaged_ports_file_is_an_error_naming_it_never_a_reset(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "ports.json"
    path.write_text(content)
    registry = PortRegistry(tmp_path)
    for call in (
        lambda: registry.get("etl"),
        lambda: registry.allocate("etl"),
        lambda: registry.named_port("etl", "worker-1"),
        lambda: addresses(tmp_path),
    ):
        with pytest.raises(StateFileError) as caught:
            call()
        assert str(path) in str(caught.value)
    assert path.read_text() == content, "the file is left for the operator to restore"


def test_endpoint_ports_live_in_the_one_registry(tmp_path: Path) -> None:
    registry = PortRegistry(tmp_path)
    airflow = set(registry.allocate("etl").__dict__.values())
    port = addresses(tmp_path).port("etl")
    assert EP_FIRST <= port <= EP_LAST and port not in airflow
    assert recorded(tmp_path, "etl", "endpoint") == port
    assert not (tmp_path / "endpoints.json").exists()
    # Airflow's ports are unchanged, a restarted server gives the same endpoint port.
    assert set(registry.allocate("etl").__dict__.values()) == airflow
    assert addresses(tmp_path).port("etl") == port
    assert registry.get("etl") is not None


def test_endpoint_allocation_skips_a_port_another_process_holds(tmp_path: Path) -> None:
    first_free = addresses(tmp_path / "probe").port("probe")
    squatter = held(first_free)
    try:
        port = addresses(tmp_path).port("etl")
        assert port != first_free
    finally:
        squatter.close()


def test_reassign_gives_a_free_port_and_records_it(tmp_path: Path) -> None:
    endpoints = addresses(tmp_path)
    port = endpoints.port("etl")
    other = endpoints.port("other")
    squatter = held(port)
    try:
        new = endpoints.reassign("etl")
        assert new not in (port, other)
        assert endpoints.port("etl") == new == recorded(tmp_path, "etl", "endpoint")
        assert endpoints.url("etl", "PRIVATE_ONLY") == f"http://127.0.0.1:{new}"
    finally:
        squatter.close()


def test_a_recorded_port_held_at_start_is_replaced_before_it_is_reported(tmp_path: Path) -> None:
    port = addresses(tmp_path).port("etl")
    squatter = held(port)
    try:
        restarted = addresses(tmp_path)
        assert restarted.port("etl") != port
        assert restarted.url("etl", "PRIVATE_ONLY") != f"http://127.0.0.1:{port}"
    finally:
        squatter.close()


def test_release_keeps_the_other_ports_of_the_environment(tmp_path: Path) -> None:
    registry = PortRegistry(tmp_path)
    ports = registry.allocate("etl")
    endpoints = addresses(tmp_path)
    endpoints.port("etl")
    endpoints.port("other")
    endpoints.release("etl")
    assert registry.get("etl") == ports
    assert endpoints.known() == {"other": recorded(tmp_path, "other", "endpoint")}
    assert set(addresses(tmp_path).known()) == {"other"}


def test_endpoints_of_an_earlier_release_are_kept(tmp_path: Path) -> None:
    legacy = tmp_path / "endpoints.json"
    legacy.write_text(json.dumps({"etl": EP_LAST}))
    assert addresses(tmp_path).port("etl") == EP_LAST
    assert recorded(tmp_path, "etl", "endpoint") == EP_LAST
    assert not legacy.exists()


def test_damaged_endpoints_file_of_an_earlier_release_is_an_error(tmp_path: Path) -> None:
    legacy = tmp_path / "endpoints.json"
    legacy.write_text('{"etl": 188')
    with pytest.raises(StateFileError, match="endpoints.json"):
        addresses(tmp_path)
    assert legacy.exists()
