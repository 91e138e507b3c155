"""Errors the domain raises; each carries the MWAA exception it becomes on the wire.

The names are MWAA's because the domain is MWAA's: the API layer only looks up
``code`` and ``status`` and never invents a message.
"""

from __future__ import annotations


class ServiceError(Exception):
    code = "InternalServerException"
    status = 500
    message_member = "message"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationException(ServiceError):
    code = "ValidationException"
    status = 400


class ResourceNotFoundException(ServiceError):
    code = "ResourceNotFoundException"
    status = 404


class AccessDeniedException(ServiceError):
    code = "AccessDeniedException"
    status = 403
    message_member = "Message"


class ServiceUnavailableException(ServiceError):
    code = "ServiceUnavailableException"
    status = 503


class InternalServerException(ServiceError):
    pass


class RestApiException(ServiceError):
    """Airflow's REST API answered an error; MWAA passes it on, always as HTTP 400."""

    status = 400

    def __init__(self, status_code: int, response: object) -> None:
        super().__init__(f"Airflow answered {status_code}")
        self.status_code = status_code
        self.response = response

    @property
    def code(self) -> str:  # type: ignore[override]
        return "RestApiClientException" if self.status_code < 500 else "RestApiServerException"
