"""The usage ledger's storage: per-minute buckets in one SQLite file.

One row per ``(minute_start, tenant, model)`` holds the requests, prompt and
completion tokens and cost of that minute. Gateways send usage in batches with a
unique id; :meth:`UsageStore.record` applies a batch and inserts its id in ONE
transaction, so a batch re-sent after a lost reply (or a crash at any point) is
counted exactly once: either the rows and the id are both committed, or neither.

The database runs in WAL mode with ``synchronous=FULL``: a batch the store has
acknowledged survives a power cut (the recorder drops a batch once acknowledged).
Calls are serialised with a lock, so one store may be used from worker threads.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["UsageRow", "UsageStore", "UsageSummary", "UsageValueError", "floor_to_minute"]

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_minute (
    minute_start      INTEGER NOT NULL,
    tenant            TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd          REAL    NOT NULL,
    PRIMARY KEY (minute_start, tenant, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_minute_by_tenant ON usage_minute (tenant, minute_start);
CREATE TABLE IF NOT EXISTS applied_batch (
    batch_id   TEXT PRIMARY KEY,
    applied_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_batch_by_time ON applied_batch (applied_at);
"""
_UPSERT = """
INSERT INTO usage_minute
    (minute_start, tenant, model, requests, prompt_tokens, completion_tokens, cost_usd)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (minute_start, tenant, model) DO UPDATE SET
    requests = requests + excluded.requests,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cost_usd = cost_usd + excluded.cost_usd
"""
_COUNTS = ("requests", "prompt_tokens", "completion_tokens")
# a count past 2**53 is a bug upstream; the cap also keeps bucket sums far from SQLite's 2**63 limit
MAX_COUNT = 2**53


class UsageValueError(ValueError):
    """A bad argument or row field; ``param`` names it (``rows[2].prompt_tokens``)."""

    def __init__(self, message: str, *, param: str, value: Any = None) -> None:
        super().__init__(message)
        self.param = param
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (str(self), self.param, self.value))


def _rebuild(message: str, param: str, value: Any) -> UsageValueError:
    return UsageValueError(message, param=param, value=value)


def floor_to_minute(ts: float) -> int:
    """Start (epoch seconds) of the minute that contains ``ts``."""
    return int(ts // 60) * 60


@dataclass
class UsageRow:
    """Usage of one tenant and model in the minute that contains ``ts`` (epoch seconds)."""

    tenant: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    ts: float

    def validate(self) -> None:
        """Check every field.

        Raises:
            UsageValueError: an empty name, a negative or non-integer count, a negative or
                non-finite cost or time; the message names the field and value.
        """
        for name in ("tenant", "model"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise UsageValueError(f"{name} must be a non-empty string (got {v!r})", param=name, value=v)
        for name in _COUNTS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT:
                raise UsageValueError(
                    f"{name} must be an integer between 0 and 2**53 (got {v!r})", param=name, value=v
                )
        check_number("cost_usd", self.cost_usd)
        check_number("ts", self.ts)


@dataclass(frozen=True)
class UsageSummary:
    """Usage of one tenant and model summed over a time range."""

    tenant: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``total_tokens``."""
        return {**asdict(self), "total_tokens": self.total_tokens}


def check_number(name: str, v: object) -> float:
    """``v`` as a float if it is a finite real number >= 0, else :class:`UsageValueError` naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise UsageValueError(f"{name} must be a finite number >= 0 (got {v!r})", param=name, value=v)
    return float(v)


class UsageStore:
    """Per-minute usage buckets and applied batch ids in one SQLite database.

    Args:
        path: the database file (its folder is created), or ``":memory:"``.
    """

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE) in record/prune
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            self._db.close()
            raise RuntimeError(
                f"{path} has usage schema version {version}; this code reads {_SCHEMA_VERSION}"
            )
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def record(self, batch_id: str, rows: list[UsageRow]) -> bool:
        """Add a batch of usage rows to their minute buckets, at most once per ``batch_id``.

        The batch id and every row are written in one transaction: a failure on any
        row (a bad value, a full disk) leaves the database as it was, and the batch
        may be sent again with the same id.

        Returns:
            True if the batch was applied, False if ``batch_id`` was applied before.

        Raises:
            UsageValueError: an empty ``batch_id`` or a row with a bad field (named in the message).
        """
        if not isinstance(batch_id, str) or not batch_id:
            raise UsageValueError(
                f"batch_id must be a non-empty string (got {batch_id!r})", param="batch_id", value=batch_id
            )
        with self._lock, self._transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO applied_batch (batch_id, applied_at) VALUES (?, ?)",
                (batch_id, time.time()),
            )
            if cur.rowcount == 0:
                return False
            for i, row in enumerate(rows):
                # validated inside the transaction: a bad row rolls back the rows before it
                if not isinstance(row, UsageRow):
                    raise UsageValueError(
                        f"rows[{i}] must be a UsageRow (got {type(row).__name__})", param=f"rows[{i}]"
                    )
                try:
                    row.validate()
                except UsageValueError as exc:
                    raise UsageValueError(
                        f"rows[{i}].{exc}", param=f"rows[{i}].{exc.param}", value=exc.value
                    ) from None
                self._db.execute(
                    _UPSERT,
                    (
                        floor_to_minute(row.ts),
                        row.tenant,
                        row.model,
                        row.requests,
                        row.prompt_tokens,
                        row.completion_tokens,
                        float(row.cost_usd),
                    ),
                )
            return True

    def query(self, tenant: str | None, since: float, until: float | None = None) -> list[UsageSummary]:
        """Usage summed per tenant and model, sorted by tenant then model.

        Minute granularity: a bucket counts when its minute start is
        ``>= floor_to_minute(since)`` and, with ``until``, ``< until``.

        Args:
            tenant: only this tenant; None for every tenant.
            since: start of the range (epoch seconds).
            until: end of the range (epoch seconds, exclusive); None for no end.

        Raises:
            UsageValueError: a negative or non-finite time, or ``until`` not after ``since``.
        """
        start = floor_to_minute(check_number("since", since))
        sql = (
            "SELECT tenant, model, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), "
            "SUM(cost_usd) FROM usage_minute WHERE minute_start >= ?"
        )
        args: list[Any] = [start]
        if until is not None:
            end = check_number("until", until)
            if end <= since:
                raise UsageValueError(
                    f"until ({until}) must be after since ({since})", param="until", value=until
                )
            sql += " AND minute_start < ?"
            args.append(end)
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        sql += " GROUP BY tenant, model ORDER BY tenant, model"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [UsageSummary(t, m, r, p, c, cost) for t, m, r, p, c, cost in rows]

    def prune(self, older_than: float) -> int:
        """Delete buckets whose minute start is before ``older_than``, and batch ids applied
        before it (a batch re-sent after that would count again). Returns buckets deleted."""
        cutoff = check_number("older_than", older_than)
        with self._lock, self._transaction():
            n = self._db.execute("DELETE FROM usage_minute WHERE minute_start < ?", (cutoff,)).rowcount
            self._db.execute("DELETE FROM applied_batch WHERE applied_at < ?", (cutoff,))
        if n:
            log.info("pruned %d usage buckets older than %s", n, time.strftime("%F", time.gmtime(cutoff)))
        return n

    def ping(self) -> None:
        """Run a trivial query (health check); raises ``sqlite3.Error`` when the database is unusable."""
        with self._lock:
            self._db.execute("SELECT count(*) FROM applied_batch").fetchone()

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT (also on an early return), or ROLLBACK on any exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT itself failed (disk full, I/O error)
                self._db.execute("ROLLBACK")
            raise
