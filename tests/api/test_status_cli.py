"""``openmwaa status`` shows what the reconciler is doing with each environment."""

from __future__ import annotations

from typing import Any

from live_server import REQUIRED, Server, wait_for, wait_status


def test_status_lists_environments_with_their_state(
    server: Server, mwaa: Any, env_name: str
) -> None:
    mwaa.create_environment(Name=env_name, **REQUIRED)
    wait_status(mwaa, env_name, {"AVAILABLE"})

    # Component health is written by the reconciler's next health check after AVAILABLE.
    def with_health() -> str | None:
        text = server.cli("status").stdout
        return text if "process healthy" in text else None

    out = wait_for(with_health, 30, "component health in openmwaa status")
    line = next(line for line in out.splitlines() if env_name in line)
    assert "AVAILABLE" in line
    assert "process healthy" in out
    mwaa.delete_environment(Name=env_name)
