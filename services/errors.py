"""Typed errors of the serving path.

Every error a client can cause is raised as an :class:`LLMOpsError` subclass that
carries the OpenAI ``param`` it concerns and the offending ``value``. The gateway
turns them into HTTP responses in exactly one place
(:mod:`services.gateway.errors`), with the table :data:`STATUS_BY_ERROR`.

The classes pickle cleanly (``__reduce__``), because Ray re-raises an exception
thrown in a deployment replica at the caller of the handle.
"""

from __future__ import annotations

from typing import Any


class LLMOpsError(Exception):
    """Base class: a client-visible error with an OpenAI ``type`` and ``code``."""

    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        value: Any = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.value = value
        if code is not None:
            self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), self.message, self.param, self.value, self.code),
        )


def _rebuild(
    cls: type[LLMOpsError], message: str, param: str | None, value: Any, code: str | None
) -> LLMOpsError:
    return cls(message, param=param, value=value, code=code)


class InvalidRequestError(LLMOpsError):
    """400: the request is malformed or a field has a bad value."""


class UnsupportedParameterError(InvalidRequestError):
    """400: a sampling parameter the model's engine cannot honour."""

    code = "unsupported_parameter"


class ContentPolicyError(InvalidRequestError):
    """A guardrail check blocked the request (400; ``param`` names the field, the message the check)."""

    code = "content_policy_violation"


class ContextLengthExceededError(InvalidRequestError):
    """400: prompt (plus requested completion) exceeds the model's context window."""

    code = "context_length_exceeded"


class AuthenticationError(LLMOpsError):
    """401: no API key, or one that matches no tenant."""

    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(LLMOpsError):
    """403: the key is valid but not allowed to do this."""

    error_type = "permission_error"


class NotFoundError(LLMOpsError):
    """404: unknown model, route or collection."""

    error_type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class RequestTooLargeError(LLMOpsError):
    """413: the request body is over the configured limit."""

    code = "request_too_large"


class RateLimitError(LLMOpsError):
    """429: quota exhausted; the response carries ``Retry-After``."""

    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailableError(LLMOpsError):
    """503: a dependency (engine, vector store) is not ready; retry later."""

    error_type = "service_unavailable"
    code = "service_unavailable"


STATUS_BY_ERROR: tuple[tuple[type[LLMOpsError], int], ...] = (
    # most specific first: the first isinstance match wins
    (RequestTooLargeError, 413),
    (InvalidRequestError, 400),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (RateLimitError, 429),
    (ServiceUnavailableError, 503),
)


def status_for(error: LLMOpsError) -> int:
    """HTTP status for a typed error (400 for an unknown subclass)."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 400
