"""``GET /openmwaa/credentials/{name}`` on the API port: an environment's execution-role
credentials, for its own processes.

It speaks the container-credentials protocol of ECS and Fargate, which botocore (and
every AWS SDK) follows when ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` and
``AWS_CONTAINER_AUTHORIZATION_TOKEN`` are set: the token in ``Authorization``, the
answer ``{AccessKeyId, SecretAccessKey, Token, Expiration}``. Only the environment's
processes are given its token (runtime/roles.py). A wrong or missing token and an
unknown environment get the same 403, naming nothing, so a caller without the token
learns nothing about which environments exist.
"""

from __future__ import annotations

import json
from typing import Protocol

from anyio import to_thread

from openmwaa.api import protocol
from openmwaa.buckets.roles import RoleCredentials, RoleRefused
from openmwaa.runtime.roles import PATH as PREFIX
from openmwaa.service.environments import Environments
from openmwaa.service.errors import ResourceNotFoundException

_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]
_FORBIDDEN: protocol.Response = (403, _HEADERS, b'{"message":"Forbidden"}')


class RoleSource(Protocol):
    def credentials(self, name: str, roles: list[str], token: str) -> RoleCredentials | None: ...


def is_credentials_path(path: str) -> bool:
    return path.startswith(PREFIX)


class CredentialRoutes:
    def __init__(self, environments: Environments, roles: RoleSource) -> None:
        self._envs = environments
        self._roles = roles

    async def handle(self, method: str, path: str, headers: dict[str, str]) -> protocol.Response:
        """Answer one call (see the module's docstring); never reads a body."""
        if method != "GET":
            return 405, [*_HEADERS, ("allow", "GET")], b'{"message":"Method Not Allowed"}'
        name = path[len(PREFIX) :]
        token = headers.get("authorization", "")
        if not name or "/" in name or not token:
            return _FORBIDDEN
        try:
            found = await to_thread.run_sync(self._credentials, name, token)
        except RoleRefused as exc:
            # Only a holder of the environment's token gets here: tell it why.
            body = json.dumps({"code": "EXECUTION_ROLE", "message": str(exc)}).encode()
            return 503, _HEADERS, body
        if found is None:
            return _FORBIDDEN
        return 200, _HEADERS, json.dumps(found.container_document()).encode()

    def _credentials(self, name: str, token: str) -> RoleCredentials | None:
        try:
            row = self._envs.row(name)
        except ResourceNotFoundException:
            return None
        # The role it runs with and, during an update, the one being applied: the token
        # tells which (each role has its own).
        configs = [row.applied, row.spec]
        roles = [str(c["ExecutionRoleArn"]) for c in configs if c and c.get("ExecutionRoleArn")]
        return self._roles.credentials(name, roles, token)
