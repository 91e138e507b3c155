"""The routes ``openmwaa worker`` uses, on the control plane's API port: signed like every
MWAA call, refused with AWS's errors, and the execution relay keeps to its own path."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from api_support import create_env
from live_server import Server, wait_status

from openmwaa.agent import ControlPlane, ControlPlaneError

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
    resp = httpx.get(f"{server.endpoint}/openmwaa/workers/x/execution/%2e%2e/%2e%2e/api/v2/dags")
    assert resp.status_code == 400
    resp = httpx.get(f"{server.endpoint}/openmwaa/workers/nosuchenv/execution/health")
    assert resp.status_code == 503
    assert "nosuchenv" not in resp.text
