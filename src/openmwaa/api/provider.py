"""One method per MWAA operation: authorize the caller, then call the domain.

Each method takes the caller and the validated input (keyed by member name)
and returns the output structure. The IAM resource of each operation is the
one AWS documents: the environment ARN, the role ARN for web login tokens,
``*`` for ListEnvironments. InvokeRestApi is a coroutine (``async_handlers``):
it waits on Airflow on the event loop instead of in a worker thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from openmwaa.runtime.base import RuntimeFailure
from openmwaa.service.endpoint import Endpoint
from openmwaa.service.environments import Environments
from openmwaa.service.errors import RestApiException
from openmwaa.service.identity import Caller

Handler = Callable[[Caller, dict[str, Any]], dict[str, Any] | None]
AsyncHandler = Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any] | None]]


class MwaaProvider:
    def __init__(self, environments: Environments, endpoint: Endpoint) -> None:
        self._envs = environments
        self._endpoint = endpoint
        self.handlers: dict[str, Handler] = {name: getattr(self, name) for name in _OPERATIONS}
        self.async_handlers: dict[str, AsyncHandler] = {
            name: getattr(self, name) for name in _ASYNC_OPERATIONS
        }

    def authorize_early(self, caller: Caller, operation: str, labels: dict[str, str]) -> None:
        """Authorize from the URI alone, before the body is parsed and validated: a caller
        the policy refuses costs no more than this. The handlers authorize again (the same
        decision); CreateWebLoginToken and InvokeRestApi authorize in the endpoint, per
        Airflow role, and are left to it."""
        if operation in _BY_NAME:
            caller.authorize(operation, self._envs.arn(labels[_BY_NAME[operation]]))
        elif operation in _BY_ARN:
            caller.authorize(operation, labels["ResourceArn"])
        elif operation == "ListEnvironments":
            caller.authorize(operation, "*")

    def CreateEnvironment(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        caller.authorize("CreateEnvironment", self._envs.arn(p["Name"]))
        return {"Arn": self._envs.create(p["Name"], p)}

    def GetEnvironment(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        caller.authorize("GetEnvironment", self._envs.arn(p["Name"]))
        return {"Environment": self._envs.get(p["Name"])}

    def UpdateEnvironment(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        caller.authorize("UpdateEnvironment", self._envs.arn(p["Name"]))
        return {"Arn": self._envs.update(p["Name"], p)}

    def DeleteEnvironment(self, caller: Caller, p: dict[str, Any]) -> None:
        caller.authorize("DeleteEnvironment", self._envs.arn(p["Name"]))
        self._envs.delete(p["Name"])

    def ListEnvironments(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        caller.authorize("ListEnvironments", "*")
        return self._envs.list(p.get("MaxResults"), p.get("NextToken"))

    def TagResource(self, caller: Caller, p: dict[str, Any]) -> None:
        caller.authorize("TagResource", p["ResourceArn"])
        self._envs.tag(p["ResourceArn"], p["Tags"])

    def UntagResource(self, caller: Caller, p: dict[str, Any]) -> None:
        caller.authorize("UntagResource", p["ResourceArn"])
        self._envs.untag(p["ResourceArn"], p["tagKeys"])

    def ListTagsForResource(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        caller.authorize("ListTagsForResource", p["ResourceArn"])
        return {"Tags": self._envs.tags(p["ResourceArn"])}

    def PublishMetrics(self, caller: Caller, p: dict[str, Any]) -> None:
        caller.authorize("PublishMetrics", self._envs.arn(p["EnvironmentName"]))
        self._envs.check_exists(p["EnvironmentName"])

    def CreateCliToken(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        caller.authorize("CreateCliToken", self._envs.arn(p["Name"]))
        return self._endpoint.cli_token(caller, p["Name"])

    def CreateWebLoginToken(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        return self._endpoint.web_login_token(caller, p["Name"])

    async def InvokeRestApi(self, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._endpoint.invoke_rest_api(caller, p)
        except RuntimeFailure as e:  # the backend cannot reach this environment's Airflow
            raise RestApiException(502, {"detail": f"Airflow is unreachable: {e}"}) from None


_OPERATIONS = (
    "CreateEnvironment",
    "GetEnvironment",
    "UpdateEnvironment",
    "DeleteEnvironment",
    "ListEnvironments",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "PublishMetrics",
    "CreateCliToken",
    "CreateWebLoginToken",
)
_ASYNC_OPERATIONS = ("InvokeRestApi",)
_BY_NAME = {
    "CreateEnvironment": "Name",
    "GetEnvironment": "Name",
    "UpdateEnvironment": "Name",
    "DeleteEnvironment": "Name",
    "CreateCliToken": "Name",
    "PublishMetrics": "EnvironmentName",
}
"""Operations on the environment ARN, and the URI label that names the environment."""
_BY_ARN = ("TagResource", "UntagResource", "ListTagsForResource")
