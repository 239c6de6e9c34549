"""The gateway's start-up gate: answer 503 while the deployments behind it load.

Serve starts the gateway replica as soon as its own constructor returns; the
model, embedding and retrieval replicas it calls may still be loading, and a
handle call to them would wait (a client sees its connection held open). Until
every deployment has answered once, a request waits at most ``wait_s`` for them
and then gets 503 with ``Retry-After``, naming what is not ready. After that the
gate is one attribute check per request: later failures are the retry's business
(:mod:`services.gateway.retry`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from services.errors import ServiceUnavailableError

Probe = Callable[[], Awaitable[Any]]


class Readiness:
    """Probes every deployment once; :meth:`wait` raises 503 until all have answered."""

    def __init__(self, probes: dict[str, Probe], wait_s: float = 1.0) -> None:
        self._probes = probes
        self._wait_s = wait_s
        self._tasks: dict[str, asyncio.Future[Any]] = {}
        self.answers: dict[str, Any] | None = None if probes else {}

    async def wait(self, wait_s: float | None = None) -> dict[str, Any]:
        """Every probe's answer; ``ServiceUnavailableError`` if one is missing after ``wait_s``."""
        if self.answers is not None:
            return self.answers
        for name, probe in self._probes.items():
            task = self._tasks.get(name)
            if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
                self._tasks[name] = asyncio.ensure_future(probe())  # a failed probe is asked again
        await asyncio.wait(self._tasks.values(), timeout=self._wait_s if wait_s is None else wait_s)
        waiting = sorted(n for n, t in self._tasks.items() if not t.done())
        failed = sorted(n for n, t in self._tasks.items() if t.done() and (t.cancelled() or t.exception()))
        if waiting or failed:
            parts = ([f"still starting: {', '.join(waiting)}"] if waiting else []) + (
                [f"failed to answer: {', '.join(failed)}"] if failed else []
            )
            raise ServiceUnavailableError(f"The platform is not ready yet ({'; '.join(parts)}).")
        self.answers = {n: t.result() for n, t in self._tasks.items()}
        return self.answers
