"""The environment endpoint's domain, as one object for the API and the gateway.

The jobs live in ``tokens.py`` (CLI and web login tokens, roles, sessions) and
``rest_api.py`` (InvokeRestApi); this facade keeps their callers (the provider,
the gateway, ``server.py``) independent of that split.
"""

from __future__ import annotations

from typing import Any

from openmwaa.runtime.base import AirflowCli, Backend
from openmwaa.service.airflow3 import AirflowDialect
from openmwaa.service.endpoint_addresses import EndpointAddresses
from openmwaa.service.environments import Environments
from openmwaa.service.identity import Caller
from openmwaa.service.rest_api import AirflowClient, RestApi
from openmwaa.service.tokens import Session, Tokens
from openmwaa.store.db import Store

__all__ = ["Endpoint", "Session"]


class Endpoint:
    def __init__(
        self,
        store: Store,
        environments: Environments,
        backend: Backend,
        addresses: EndpointAddresses,
        client: AirflowClient[Any],
    ) -> None:
        self.addresses = addresses
        self.tokens = Tokens(store, environments, backend, addresses)
        self.rest_api = RestApi(store, environments, backend, client)

    def cli_token(self, caller: Caller, name: str) -> dict[str, Any]:
        return self.tokens.cli_token(caller, name)

    def web_login_token(self, caller: Caller, name: str) -> dict[str, Any]:
        return self.tokens.web_login_token(caller, name)

    async def invoke_rest_api(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        return await self.rest_api.invoke(caller, p)

    def airflow_base(self, name: str) -> tuple[str, AirflowDialect] | None:
        return self.tokens.airflow_base(name)

    def web_session(self, name: str, token: str) -> Session:
        return self.tokens.web_session(name, token)

    def cli(self, name: str, token: str) -> AirflowCli:
        return self.tokens.cli(name, token)
