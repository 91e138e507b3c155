"""Fixtures of the API tests that modules ask for by name."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import cleanup
from live_server import Server


@pytest.fixture(scope="module")
def delete_module_environments(server: Server, mwaa: Any) -> Any:
    """Delete, at the end of the module, every environment its tests made."""
    yield
    cleanup(server, mwaa)


@pytest.fixture(scope="module")
def loose(server: Server) -> Any:
    """A client that sends what botocore's own validation would refuse."""
    return server.client(parameter_validation=False)
