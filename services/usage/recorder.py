"""Per-replica usage buffer of the gateway: counts in memory, sends batches to the ledger.

:meth:`UsageRecorder.add` runs on the gateway's event loop for every finished
request, so it is O(1), never awaits and never blocks: it adds to an in-memory
bucket per ``(minute, tenant, model)``. A background task sends the buckets every
``flush_interval_s`` as one batch with a fresh id (``uuid4().hex``) through
``send`` — any async callable, e.g. ``lambda bid, rows: ledger.record.remote(bid, rows)``.

Delivery: a batch stays buffered, with the same id, until ``send`` returns; a
failed or timed-out send is retried at the next interval. The ledger applies a
batch id at most once, so a retry after a lost reply counts nothing twice. A
batch the ledger rejects as invalid (``ValueError`` or ``InvalidRequestError``,
which a retry cannot fix) is dropped with an error log instead.

Bound: at most ``max_buffered_rows`` rows (one per minute, tenant and model) wait
while the ledger is unreachable. Past that the OLDEST rows are dropped: one
warning per outage is logged and :attr:`UsageRecorder.dropped_rows` counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.errors import InvalidRequestError
from services.usage.store import UsageRow, floor_to_minute

__all__ = ["Send", "UsageRecorder"]

log = logging.getLogger(__name__)

Send = Callable[[str, list[UsageRow]], Awaitable[object]]
"""``await send(batch_id, rows)``: store the batch; raise to have it retried."""


@dataclass(eq=False)  # compared by identity: two batches are never "equal"
class _Batch:
    batch_id: str
    rows: deque[UsageRow]


class UsageRecorder:
    """Aggregate usage in memory and send it to the ledger in idempotent batches.

    Args:
        send: async callable ``(batch_id, rows)`` that stores a batch; an exception
            (or ``send_timeout_s`` passing) keeps the batch for the next interval.
        flush_interval_s: seconds between sends.
        max_buffered_rows: rows kept while sends fail; the oldest beyond it are dropped.
        send_timeout_s: seconds one send may take before it counts as failed.
        clock: epoch-seconds clock (tests pass a fake).
    """

    def __init__(
        self,
        send: Send,
        flush_interval_s: float = 1.0,
        *,
        max_buffered_rows: int = 10_000,
        send_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0 (got {flush_interval_s})")
        if max_buffered_rows < 1:
            raise ValueError(f"max_buffered_rows must be >= 1 (got {max_buffered_rows})")
        if not send_timeout_s > 0:
            raise ValueError(f"send_timeout_s must be > 0 (got {send_timeout_s})")
        self._send = send
        self._interval = flush_interval_s
        self._max = max_buffered_rows
        self._timeout = send_timeout_s
        self._clock = clock
        self._open: dict[tuple[int, str, str], UsageRow] = {}  # not yet in a batch
        self._pending: deque[_Batch] = deque()  # cut, oldest first, not yet acknowledged
        self._buffered = 0  # rows in _open and _pending
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failing = False  # a send failed and none succeeded since (one warning per outage)
        self._dropping = False  # rows were dropped and no send succeeded since
        self.dropped_rows = 0
        self.sent_batches = 0

    @property
    def buffered_rows(self) -> int:
        """Rows waiting to be sent (one per minute, tenant and model)."""
        return self._buffered

    def add(
        self, tenant: str, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float
    ) -> None:
        """Count one finished request. O(1); never awaits; starts the flush task on first use.

        Raises:
            ValueError: an empty tenant or model, or a negative count or cost (named).
        """
        minute = floor_to_minute(self._clock())
        key = (minute, tenant, model)
        row = self._open.get(key)
        if row is None:
            row = UsageRow(tenant, model, 1, prompt_tokens, completion_tokens, cost_usd, minute)
            row.validate()
            row.cost_usd = float(cost_usd)
            self._open[key] = row
            self._buffered += 1
            if self._buffered > self._max:
                self._drop_oldest()
        else:
            UsageRow(tenant, model, 1, prompt_tokens, completion_tokens, cost_usd, minute).validate()
            row.requests += 1
            row.prompt_tokens += prompt_tokens
            row.completion_tokens += completion_tokens
            row.cost_usd += cost_usd
        self._ensure_task()

    def start(self) -> None:
        """Start the background flush task (needs a running event loop)."""
        if self._closed:
            raise RuntimeError("the usage recorder is closed")
        asyncio.get_running_loop()  # RuntimeError outside a loop, as documented
        self._ensure_task()

    async def flush(self) -> bool:
        """Send everything buffered now, oldest batch first.

        Returns:
            True when nothing is left unsent; False when a send failed (its batch,
            and any after it, stay buffered with their ids for the next try).
        """
        async with self._flush_lock:
            self._cut()
            while self._pending:
                batch = self._pending[0]
                try:
                    await asyncio.wait_for(self._send(batch.batch_id, list(batch.rows)), self._timeout)
                except (ValueError, InvalidRequestError) as exc:
                    # the ledger rejected the batch's content: a retry would fail the same way
                    # and hold back every later batch, so this one is dropped
                    log.error(
                        "usage batch %s (%d rows) rejected, dropped: %s", batch.batch_id, len(batch.rows), exc
                    )
                    self._remove(batch)
                    self.dropped_rows += len(batch.rows)
                    continue
                except Exception as exc:
                    if not self._failing:
                        log.warning(
                            "usage batch %s (%d rows) not stored, retrying every %gs: %r",
                            batch.batch_id,
                            len(batch.rows),
                            self._interval,
                            exc,
                        )
                    self._failing = True
                    return False
                self._remove(batch)
                self.sent_batches += 1
                if self._failing:
                    log.info("usage batches are being stored again")
                self._failing = self._dropping = False
            return True

    async def close(self) -> bool:
        """Stop the background task and send what is buffered (one try).

        Returns:
            True when everything was sent. Later :meth:`add` calls still buffer, but
            only an explicit :meth:`flush` sends them.
        """
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return await self.flush()

    # -- internals ----------------------------------------------------------------------
    def _ensure_task(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (sync code, tests): flush() sends
            return
        self._task = loop.create_task(self._run(), name="usage-recorder-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:  # flush handles send errors; anything else is a bug, keep flushing
                log.exception("usage flush failed")

    def _remove(self, batch: _Batch) -> None:
        # rows may have been dropped (even the whole batch) while its send was in flight
        if self._pending and self._pending[0] is batch:
            self._pending.popleft()
            self._buffered -= len(batch.rows)

    def _cut(self) -> None:
        """Move the open buckets into a new batch with a fresh id."""
        if self._open:
            rows = deque(sorted(self._open.values(), key=lambda r: r.ts))
            self._pending.append(_Batch(uuid.uuid4().hex, rows))
            self._open = {}

    def _drop_oldest(self) -> None:
        if not self._pending:
            self._cut()  # the open buckets alone are over the bound: their oldest minute goes
        batch = self._pending[0]
        batch.rows.popleft()
        if not batch.rows:
            self._pending.popleft()
        self._buffered -= 1
        self.dropped_rows += 1
        if not self._dropping:
            log.warning(
                "usage buffer full (%d rows, ledger unreachable?): dropping the oldest rows", self._max
            )
            self._dropping = True
