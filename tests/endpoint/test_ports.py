"""An endpoint port that another process holds is never an environment's WebserverUrl.

End to end with the test backend: the environment's port is taken while the server is
down; after the restart GetEnvironment names another port, and that one serves the
environment. (tests/endpoint/test_gateway.py covers a port taken while the server runs.)
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from live_server import REQUIRED, Server, wait_for, wait_status

ENV = "portenv"


def _port(client: object) -> int:
    env = client.get_environment(Name=ENV)["Environment"]  # type: ignore[attr-defined]
    return int(urlsplit(env["WebserverUrl"]).port or 0)


def test_a_taken_endpoint_port_moves_and_get_environment_says_so(tmp_path: Path) -> None:
    server = Server(tmp_path / "plane", ["--backend", "test"])
    server.start()
    squatter = socket.socket()
    try:
        client = server.client()
        client.create_environment(Name=ENV, **REQUIRED)
        wait_status(client, ENV, {"AVAILABLE"})
        taken = _port(client)
        login = f"http://127.0.0.1:{taken}/aws_mwaa/aws-console-sso"
        wait_for(lambda: _get(login), 30, "the endpoint")
        server.stop()
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        server.start()
        client = server.client()
        wait_status(client, ENV, {"AVAILABLE"})
        moved = _port(client)
        assert moved != taken
        page = wait_for(
            lambda: _get(f"http://127.0.0.1:{moved}/aws_mwaa/aws-console-sso"), 30, "new port"
        )
        assert ENV in page
    finally:
        squatter.close()
        server.stop()


def _get(url: str) -> str | None:
    try:
        answer = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return answer.text if answer.status_code == 200 else None
