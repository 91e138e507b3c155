"""WebserverAccessMode picks the addresses an environment's endpoint listens on.

A control plane with the test backend (no Airflow: the endpoint answers 503
"not running" for proxied paths) and a public address of 127.0.0.2, which
Linux serves on loopback like 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from endpoint_support import REQUIRED, Server, wait_status

PUBLIC = "127.0.0.2"


@pytest.fixture(scope="module")
def public_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("access-mode"), ["--backend", "test", "--public-host", PUBLIC]
    )
    srv.start()
    yield srv
    client = srv.client()
    for name in client.list_environments()["Environments"]:
        client.delete_environment(Name=name)
    deadline = time.monotonic() + 30
    while client.list_environments()["Environments"] and time.monotonic() < deadline:
        time.sleep(0.2)
    srv.stop()


def listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_listening(host: str, port: int, wanted: bool = True) -> None:
    deadline = time.monotonic() + 10
    while listens(host, port) != wanted:
        assert time.monotonic() < deadline, f"{host}:{port} listening should be {wanted}"
        time.sleep(0.1)


def test_access_modes(public_plane: Server, tmp_path: Path) -> None:
    client = public_plane.client()
    hosts: dict[str, tuple[str, int]] = {}
    for name, mode in (
        ("private", "PRIVATE_ONLY"),
        ("public", "PUBLIC_ONLY"),
        ("both", "PUBLIC_AND_PRIVATE"),
    ):
        client.create_environment(Name=name, **REQUIRED, WebserverAccessMode=mode)
    for name in ("private", "public", "both"):
        env = wait_status(client, name, {"AVAILABLE"})
        hostname = client.create_cli_token(Name=name)["WebServerHostname"]
        assert env["WebserverUrl"] == f"http://{hostname}"
        host, port = hostname.rsplit(":", 1)
        hosts[name] = (host, int(port))
    assert hosts["private"][0] == "127.0.0.1"
    assert hosts["public"][0] == PUBLIC and hosts["both"][0] == PUBLIC
    assert len({port for _, port in hosts.values()}) == 3

    port = hosts["private"][1]
    wait_listening("127.0.0.1", port)
    assert not listens(PUBLIC, port)
    port = hosts["public"][1]
    wait_listening(PUBLIC, port)
    assert not listens("127.0.0.1", port)
    port = hosts["both"][1]
    wait_listening(PUBLIC, port)
    wait_listening("127.0.0.1", port)

    # The endpoint answers for its environment even without an Airflow behind it.
    page = httpx.get(f"http://{PUBLIC}:{hosts['public'][1]}/aws_mwaa/aws-console-sso")
    assert page.status_code == 200 and "Signing in" in page.text
    assert httpx.get(f"http://{PUBLIC}:{hosts['public'][1]}/home").status_code == 503

    # A restarted control plane serves every endpoint at the same address.
    public_plane.stop()
    public_plane.start()
    wait_listening(PUBLIC, hosts["public"][1])
    assert client.create_cli_token(Name="public")["WebServerHostname"] == (
        f"{PUBLIC}:{hosts['public'][1]}"
    )

    # Deleting an environment closes its endpoint.
    client.delete_environment(Name="private")
    wait_listening("127.0.0.1", hosts["private"][1], wanted=False)
