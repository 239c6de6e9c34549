"""One retry for a request whose replica died before the client got a byte of it.

A replica can die under a request (OOM, a crash, a node lost). Nothing has gone
to the client yet when the call to it fails before its result (or, for a
stream, before its first chunk), so the gateway asks once more: Serve's router
has marked the dead replica and routes to another one, or waits for the one the
controller restarts. When that retry cannot answer either (the same failure, or
nothing within ``timeout_s``), the client gets 503 ``service_unavailable`` with
``Retry-After`` — never a 500, which would claim a bug. A stream that broke
after its first chunk cannot be retried: it ends with an error event. The
outcome is recorded on the request's observation (``retry`` in the request log,
``llmops_replica_retries_total{outcome}``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from services.errors import ServiceUnavailableError

logger = logging.getLogger("llmops.gateway")
T = TypeVar("T")

RECOVERED, FAILED, STREAM_BROKEN = "recovered", "failed", "stream_broken"


def replica_lost(exc: BaseException | None) -> bool:
    """True if ``exc`` says a replica (this one, or one it called) died or is unreachable."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (RayActorError, ActorUnavailableError)):
            return True
        if isinstance(exc, RayTaskError) and exc.cause is not None and exc.cause is not exc:
            exc = exc.cause
        else:
            exc = exc.__cause__
    return False


class ReplicaLostError(ServiceUnavailableError):
    """503: the replica serving the request stopped and a retry could not answer."""


async def retry_once(call: Callable[[], Awaitable[T]], what: str, obs: Any, timeout_s: float) -> T:
    """``await call()``; once more if its replica died, bounded by ``timeout_s``.

    Args:
        call: makes a new deployment call each time it is called.
        what: the deployment, for the log and the 503 message.
        obs: the request's observation (its ``retry`` and ``request_id`` are used), or None.
        timeout_s: the longest the retry may take to answer.
    """
    try:
        return await call()
    except Exception as exc:
        if not replica_lost(exc):
            raise
        rid = getattr(obs, "request_id", "")
        logger.warning("request %s: the %s replica died before answering (%s); retrying once", rid, what, exc)
    try:
        result = await asyncio.wait_for(call(), timeout_s)
    except Exception as exc:
        lost = isinstance(exc, TimeoutError) or replica_lost(exc)
        _mark(obs, FAILED if lost else RECOVERED)
        if lost:
            why = f"no answer within {timeout_s:g}s" if isinstance(exc, TimeoutError) else "it failed too"
            raise ReplicaLostError(
                f"The {what} replica serving this request stopped, and one retry did not help ({why}); "
                "retry shortly."
            ) from exc
        raise  # the retry answered, with an error of its own (a 400, say): that is the answer
    _mark(obs, RECOVERED)
    return result


def _mark(obs: Any, outcome: str) -> None:
    if obs is not None:
        obs.retry = outcome
