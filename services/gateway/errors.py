"""The one place where exceptions become HTTP responses (OpenAI error envelope).

Typed :class:`~services.errors.LLMOpsError`s map by :data:`~services.errors.STATUS_BY_ERROR`;
a replica that died under the request (and was not saved by the one retry of
:mod:`services.gateway.retry`) is a 503 with ``Retry-After``; anything else is a
500 that says "internal error" and the request id, while the traceback goes to the
log under that id.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse
from ray.exceptions import RayTaskError

from services.errors import LLMOpsError, RateLimitError, ServiceUnavailableError, status_for
from services.gateway.retry import replica_lost

logger = logging.getLogger("llmops.gateway")


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def unwrap(exc: BaseException) -> BaseException:
    """The client-visible cause of an exception raised in another replica.

    Ray re-raises a replica's exception as a ``RayTaskError`` that is also an
    instance of the original class; ``.cause`` holds the original.
    """
    while isinstance(exc, RayTaskError) and exc.cause is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def to_response(exc: BaseException, request_id: str) -> JSONResponse:
    """The JSON response for ``exc``; logs server errors with their traceback."""
    exc = unwrap(exc)
    if isinstance(exc, LLMOpsError):
        status = status_for(exc)
        headers = {}
        if isinstance(exc, (RateLimitError, ServiceUnavailableError)):
            headers["Retry-After"] = "1"
        if status >= 500:
            logger.warning("request %s: %s: %s", request_id, type(exc).__name__, exc.message)
        return JSONResponse(
            envelope(exc.message, exc.error_type, exc.param, exc.code), status_code=status, headers=headers
        )
    if replica_lost(exc):  # a dying replica is not a bug of ours: the client may retry
        logger.warning("request %s: a replica it needed stopped: %s", request_id, exc)
        return JSONResponse(
            envelope(
                f"A replica serving this request stopped; retry shortly (request id {request_id}).",
                "service_unavailable",
                None,
                "service_unavailable",
            ),
            status_code=503,
            headers={"Retry-After": "1"},
        )
    logger.error("request %s failed", request_id, exc_info=exc)
    return JSONResponse(
        envelope(f"internal error, request id {request_id}", "server_error", None, "internal_error"),
        status_code=500,
    )
