"""The routes ``openmwaa worker`` uses, on the control plane's API port: signed like every
MWAA call, refused with AWS's errors, and the execution relay keeps to its own path and
opens an environment only to its own relay secret."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from api_support import create_env
from live_server import Server, wait_status
from service_support import REQUEST, FakeBackend, make_environments, make_store

from openmwaa.agent import ControlPlane, ControlPlaneError
from openmwaa.api.workers import WorkerRoutes
from openmwaa.runtime import bundles
from openmwaa.runtime.base import EnvironmentSpec, WorkerBundle
from openmwaa.service.worker_hosts import WorkerHosts

pytestmark = pytest.mark.usefixtures("delete_module_environments")


def admin(server: Server) -> ControlPlane:
    creds = server.credentials()
    return ControlPlane(server.endpoint, creds["key"], creds["secret"], "us-east-1")


def test_unsigned_calls_are_refused(server: Server) -> None:
    resp = httpx.get(f"{server.endpoint}/openmwaa/workers/anything/bundle")
    assert resp.status_code == 403
    assert resp.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"


def test_unknown_environment(server: Server) -> None:
    with pytest.raises(ControlPlaneError) as missing:
        admin(server).call("GET", "nosuchenv/bundle")
    assert missing.value.code == "ResourceNotFoundException"
    assert missing.value.status == 404


def test_an_environment_without_celery_workers_says_how_to_get_them(
    server: Server, mwaa: Any, env_name: str
) -> None:
    create_env(server, mwaa, env_name)
    wait_status(mwaa, env_name, {"AVAILABLE"})
    with pytest.raises(ControlPlaneError) as refused:
        admin(server).call("GET", f"{env_name}/bundle")
    assert refused.value.code == "ValidationException"
    assert "--broker-url" in refused.value.message


@pytest.mark.parametrize(
    "report",
    [
        {"Limit": 1},
        {"Host": "h", "Limit": 1, "Workers": -1},
        {"Host": "h", "Limit": "many"},
        {"Host": "h", "Workers": 3},  # no Limit (the host's --max-workers): nothing to cap by
    ],
)
def test_malformed_reports_are_refused(server: Server, report: dict[str, Any]) -> None:
    with pytest.raises(ControlPlaneError) as bad:
        admin(server).call("POST", "nosuchenv/report", report)
    assert bad.value.code == "ValidationException"
    assert bad.value.status == 400


def test_the_execution_relay_stays_inside_the_execution_api(server: Server) -> None:
    # (httpx itself removes literal dot segments; encoded ones reach the server.)
    relay = f"{server.endpoint}/openmwaa/workers"
    resp = httpx.get(f"{relay}/x/execution/secret/%2e%2e/%2e%2e/api/v2/dags")
    assert resp.status_code == 400
    # No environment, no secret: the same refusal as a wrong secret, naming nothing.
    for path in ("nosuchenv/execution/health", "nosuchenv/execution/secret/health"):
        resp = httpx.get(f"{relay}/{path}", headers={"authorization": "Bearer stolen"})
        assert resp.status_code == 403
        assert "nosuchenv" not in resp.text


# -- the relay, in process, in front of a stand-in for Airflow's execution API -----------


class Upstream(BaseHTTPRequestHandler):
    """Answers every call with what it received: method, path and Authorization."""

    seen: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        call = {"path": self.path, "authorization": self.headers.get("authorization")}
        self.seen.append(call)
        body = json.dumps(call).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CeleryBackend(FakeBackend):
    """Running Celery environments with bundles as the local backend makes them (the relay
    secret derived from each one's JWT key), whose Airflow is ``url``."""

    url = ""

    def worker_bundle(self, spec: EnvironmentSpec) -> WorkerBundle | None:
        bundle = super().worker_bundle(spec)
        assert bundle is not None
        env = bundles.portable_env({"AIRFLOW__API_AUTH__JWT_SECRET": f"jwt-{spec.name}"})
        return WorkerBundle(**{**vars(bundle), "env": env})

    def webserver_url(self, spec: EnvironmentSpec) -> str | None:
        return self.url


def secret_of(name: str) -> str:
    secret = bundles.relay_secret({"AIRFLOW__API_AUTH__JWT_SECRET": f"jwt-{name}"})
    assert secret is not None
    return secret


@pytest.fixture
def routes(tmp_path: Path) -> Iterator[WorkerRoutes]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    store = make_store(tmp_path)
    envs = make_environments(store)
    backend = CeleryBackend()
    backend.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    for name in ("a", "b"):
        envs.create(name, REQUEST)
        store.update_environment(name, status="AVAILABLE")
    Upstream.seen = []
    try:
        yield WorkerRoutes(WorkerHosts(backend, envs))
    finally:
        httpd.shutdown()
        store.close()


def relay(routes: WorkerRoutes, path: str, token: str) -> tuple[int, Any]:
    async def call() -> tuple[int, Any]:
        headers = [("authorization", f"Bearer {token}")]
        status, _headers, body = await routes.execution("GET", path, "", headers, b"")
        return status, json.loads(body)

    return anyio.run(call)


def test_a_stolen_token_is_useless_without_its_environments_secret(
    routes: WorkerRoutes,
) -> None:
    # A task of A holding a token taken from B's broker messages and A's own secret.
    status, answer = relay(routes, f"/openmwaa/workers/b/execution/{secret_of('a')}/x", "tok-b")
    assert (status, answer) == (403, {"detail": "Forbidden"})
    for path in ("b/execution/x", "b/execution/", f"nosuchenv/execution/{secret_of('b')}/x"):
        assert relay(routes, f"/openmwaa/workers/{path}", "tok-b") == (403, answer)
    assert Upstream.seen == []  # nothing reached Airflow
    # B's own worker host, with B's secret: the call and its token go through.
    status, answer = relay(
        routes, f"/openmwaa/workers/b/execution/{secret_of('b')}/variables/greeting", "tok-b"
    )
    assert status == 200
    assert answer == {"path": "/execution/variables/greeting", "authorization": "Bearer tok-b"}
