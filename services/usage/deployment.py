"""The usage ledger deployment: one replica that owns the SQLite usage database.

Gateways call :meth:`UsageLedger.record` with batches from their
:class:`~services.usage.recorder.UsageRecorder`; the ``GET /v1/usage`` route calls
:meth:`UsageLedger.query`. SQLite calls are quick but blocking, so they run in a
worker thread, one at a time (an asyncio lock, so no thread waits on another).
Buckets older than ``retention_days`` are pruned at start and then hourly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ray import serve

from services.errors import InvalidRequestError
from services.usage.config import UsageConfig
from services.usage.store import UsageRow, UsageStore, UsageValueError

logger = logging.getLogger("llmops.usage")

PRUNE_EVERY_S = 3600.0
T = TypeVar("T")


@serve.deployment(name="usage")
class UsageLedger:
    """Serve deployment over :class:`UsageStore`.

    Args:
        config: a :class:`UsageConfig` as a dict.
        data_dir: folder for ``usage.sqlite`` when ``config.path`` is unset.
        clock: epoch-seconds clock (tests pass a fake).
    """

    def __init__(
        self,
        config: dict[str, Any],
        data_dir: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = UsageConfig.model_validate(config)
        self._clock = clock
        self.store = UsageStore(self.config.resolved_path(data_dir))
        self._lock = asyncio.Lock()
        self._last_prune = clock()
        self.store.prune(self._cutoff())  # once, before serving; the event loop is not serving yet
        logger.info("usage ledger at %s (keeps %d days)", self.store.path, self.config.retention_days)

    async def record(self, batch_id: str, rows: list[UsageRow]) -> bool:
        """Store one batch from a gateway; False if ``batch_id`` was stored before.

        Raises:
            InvalidRequestError: a bad batch id or row (nothing of the batch is stored).
        """
        await self._prune_if_due()
        try:
            return await self._run(self.store.record, batch_id, rows)
        except UsageValueError as exc:
            raise InvalidRequestError(str(exc), param=exc.param, value=exc.value) from None

    async def query(
        self, tenant: str | None, since: float, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Usage per tenant and model since ``since`` (minute granularity), as dicts with
        ``tenant, model, requests, prompt_tokens, completion_tokens, total_tokens, cost_usd``.

        Args:
            tenant: one tenant, or None for all.
            since: epoch seconds; buckets whose minute start is >= the minute of ``since``.
            until: epoch seconds, exclusive; None for no end.

        Raises:
            InvalidRequestError: a negative or non-finite time, or ``until`` not after
                ``since`` (``param`` names which).
        """
        try:
            summaries = await self._run(self.store.query, tenant, since, until)
        except UsageValueError as exc:
            raise InvalidRequestError(str(exc), param=exc.param, value=exc.value) from None
        return [s.as_dict() for s in summaries]

    async def prune(self) -> int:
        """Delete buckets older than ``retention_days`` now; returns how many."""
        self._last_prune = self._clock()
        return await self._run(self.store.prune, self._cutoff())

    async def check_health(self) -> None:
        """Serve's health check: the database answers a query."""
        await self._prune_if_due()
        await self._run(self.store.ping)

    def __del__(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()

    # -- internals ----------------------------------------------------------------------
    def _cutoff(self) -> float:
        return max(0.0, self._clock() - self.config.retention_days * 86_400)

    async def _prune_if_due(self) -> None:
        if self._clock() - self._last_prune >= PRUNE_EVERY_S:
            try:
                await self.prune()
            except Exception:  # pruning is housekeeping: never fail a record or health check on it
                logger.exception("pruning the usage ledger failed")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            return await asyncio.to_thread(fn, *args)
