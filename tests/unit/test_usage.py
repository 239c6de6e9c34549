"""The usage ledger: SQLite store, the gateway's recorder and the Serve deployment."""

from __future__ import annotations

import asyncio
import logging
import pickle
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.errors import InvalidRequestError
from services.usage.config import UsageConfig
from services.usage.deployment import UsageLedger
from services.usage.recorder import UsageRecorder
from services.usage.store import UsageRow, UsageStore, UsageSummary, UsageValueError, floor_to_minute

pytestmark = pytest.mark.unit

T0 = 1_700_000_040.0  # a minute start (1_700_000_040 % 60 == 0)
DAY = 86_400.0


def row(
    tenant: str = "acme",
    model: str = "m1",
    ts: float = T0,
    requests: int = 1,
    prompt: int = 10,
    completion: int = 5,
    cost: float = 0.01,
) -> UsageRow:
    return UsageRow(tenant, model, requests, prompt, completion, cost, ts)


@pytest.fixture
def store() -> Iterator[UsageStore]:
    s = UsageStore(":memory:")
    yield s
    s.close()


def as_tuples(summaries: list[UsageSummary]) -> list[tuple[object, ...]]:
    return [
        (s.tenant, s.model, s.requests, s.prompt_tokens, s.completion_tokens, round(s.cost_usd, 9))
        for s in summaries
    ]


# -- config ---------------------------------------------------------------------------------
def test_config_defaults_and_one_replica() -> None:
    cfg = UsageConfig()
    assert (cfg.enabled, cfg.path, cfg.flush_interval_s, cfg.retention_days) == (True, None, 1.0, 90)
    assert (cfg.deployment.num_cpus, cfg.deployment.max_ongoing_requests) == (0.1, 64)
    assert cfg.resolved_path("/data") == "/data/usage.sqlite"
    assert UsageConfig(path=":memory:").resolved_path(None) == ":memory:"
    with pytest.raises(ValueError, match=r"usage\.path is unset"):
        cfg.resolved_path(None)
    with pytest.raises(ValidationError, match=r"deployment.num_replicas must be 1 \(got 2\)"):
        UsageConfig(deployment={"num_replicas": 2})
    with pytest.raises(ValidationError, match=r"deployment.autoscaling.max_replicas must be 1 \(got 3\)"):
        UsageConfig(deployment={"autoscaling": {"max_replicas": 3}})
    assert UsageConfig(deployment={"autoscaling": {"max_replicas": 1}}).deployment.autoscaling is not None
    for bad in ({"flush_interval_s": 0}, {"flush_interval_s": 61}, {"retention_days": 0}, {"nope": 1}):
        with pytest.raises(ValidationError):
            UsageConfig.model_validate(bad)


# -- store ----------------------------------------------------------------------------------
def test_store_aggregates_by_minute_tenant_and_model(store: UsageStore) -> None:
    assert store.record(
        "b1",
        [
            row(ts=T0 + 1),
            row(ts=T0 + 59, prompt=20, completion=7, cost=0.02),  # same minute bucket
            row(ts=T0 + 60, prompt=1, completion=1, cost=0.5),  # next minute, same tenant/model
            row(model="m2", ts=T0 + 5, prompt=3, completion=0, cost=0.0),
            row(tenant="beta", ts=T0 + 5, requests=4, prompt=100, completion=50, cost=1.25),
        ],
    )
    assert store.record("b2", [row(ts=T0 + 30, requests=2, prompt=2, completion=2, cost=0.005)])
    buckets = store._db.execute(
        "SELECT minute_start, tenant, model, requests FROM usage_minute ORDER BY 1, 2, 3"
    ).fetchall()
    assert buckets == [
        (T0, "acme", "m1", 4),
        (T0, "acme", "m2", 1),
        (T0, "beta", "m1", 4),
        (T0 + 60, "acme", "m1", 1),
    ]
    assert as_tuples(store.query(None, T0)) == [
        ("acme", "m1", 5, 33, 15, 0.535),
        ("acme", "m2", 1, 3, 0, 0.0),
        ("beta", "m1", 4, 100, 50, 1.25),
    ]
    top = store.query("beta", T0)[0]
    assert top.total_tokens == 150
    assert top.as_dict() == {
        "tenant": "beta",
        "model": "m1",
        "requests": 4,
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cost_usd": 1.25,
        "total_tokens": 150,
    }


def test_store_since_until_and_tenant_filters(store: UsageStore) -> None:
    store.record(
        "b",
        [
            row(ts=T0 - 61, prompt=1),  # two minutes before
            row(ts=T0 + 10, prompt=10),
            row(ts=T0 + 70, prompt=100),
            row(tenant="beta", ts=T0 + 70, prompt=1000),
        ],
    )
    # minute granularity: since inside a minute includes that whole minute
    assert [s.prompt_tokens for s in store.query("acme", T0 + 59)] == [110]
    assert [s.prompt_tokens for s in store.query("acme", T0 - 120)] == [111]
    assert [s.prompt_tokens for s in store.query("acme", T0 + 60)] == [100]
    assert store.query("acme", T0 + 120) == []
    assert [s.prompt_tokens for s in store.query("acme", T0 - 120, until=T0)] == [1]
    assert [s.prompt_tokens for s in store.query("acme", T0, until=T0 + 61)] == [110]
    assert [(s.tenant, s.prompt_tokens) for s in store.query(None, T0 + 60)] == [
        ("acme", 100),
        ("beta", 1000),
    ]
    assert store.query("nobody", 0) == []
    with pytest.raises(UsageValueError, match=r"until \(5\) must be after since \(10\)") as exc:
        store.query(None, 10, until=5)
    assert exc.value.param == "until"
    with pytest.raises(UsageValueError, match="since must be a finite number >= 0"):
        store.query(None, float("nan"))


def test_store_retry_with_same_batch_id_counts_once(store: UsageStore) -> None:
    rows = [row(prompt=7), row(model="m2", prompt=3)]
    assert store.record("batch-1", rows) is True
    assert store.record("batch-1", rows) is False
    assert store.record("batch-1", [row(prompt=999)]) is False  # the id decides, not the content
    assert as_tuples(store.query(None, T0)) == [("acme", "m1", 1, 7, 5, 0.01), ("acme", "m2", 1, 3, 5, 0.01)]
    assert store.record("batch-2", rows) is True
    assert [s.prompt_tokens for s in store.query(None, T0)] == [14, 6]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (row(prompt=-1), "rows[2].prompt_tokens"),
        (row(completion=2.5), "rows[2].completion_tokens"),  # type: ignore[arg-type]
        (row(cost=float("inf")), "rows[2].cost_usd"),
        (row(requests=2**60), "rows[2].requests"),
        (row(tenant=""), "rows[2].tenant"),
    ],
)
def test_store_bad_row_after_good_rows_applies_nothing(store: UsageStore, bad: UsageRow, field: str) -> None:
    store.record("before", [row(prompt=1)])
    with pytest.raises(UsageValueError, match="^" + re.escape(field) + " must") as exc:
        store.record("b", [row(prompt=10), row(model="m2", prompt=20), bad])
    assert exc.value.param == field
    assert as_tuples(store.query(None, 0)) == [("acme", "m1", 1, 1, 5, 0.01)]
    # the batch id was rolled back with the rows: a corrected retry is applied
    assert store.record("b", [row(prompt=10), row(model="m2", prompt=20)]) is True
    assert [s.prompt_tokens for s in store.query(None, 0)] == [11, 20]


def test_store_database_failure_mid_batch_rolls_back(store: UsageStore) -> None:
    # a failure inside SQLite itself (not input validation) on the third row of the batch
    store._db.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON usage_minute WHEN NEW.tenant = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        store.record("b", [row(), row(model="m2"), row(tenant="boom")])
    assert store.query(None, 0) == []
    assert store._db.execute("SELECT count(*) FROM applied_batch").fetchone() == (0,)
    assert not store._db.in_transaction
    assert store.record("b", [row(), row(model="m2")]) is True
    assert len(store.query(None, 0)) == 2


def test_store_rejects_bad_arguments(store: UsageStore) -> None:
    with pytest.raises(UsageValueError, match="batch_id must be a non-empty string") as exc:
        store.record("", [row()])
    assert exc.value.param == "batch_id"
    with pytest.raises(UsageValueError, match=r"rows\[0\] must be a UsageRow \(got dict\)"):
        store.record("b", [{"tenant": "acme"}])  # type: ignore[list-item]
    err = pickle.loads(pickle.dumps(UsageValueError("x must be", param="x", value=-1)))
    assert (str(err), err.param, err.value) == ("x must be", "x", -1)


def test_store_persists_across_reopen_and_prunes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "usage.sqlite"
    s = UsageStore(str(path))
    assert s._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    s.record(
        "b1", [row(ts=T0 - 2 * DAY, prompt=1), row(ts=T0, prompt=2), row(tenant="beta", ts=T0, prompt=3)]
    )
    s.close()
    s = UsageStore(str(path))
    assert [(x.tenant, x.prompt_tokens) for x in s.query(None, 0)] == [("acme", 3), ("beta", 3)]
    assert s.record("b1", [row()]) is False  # applied ids persist too
    assert s.prune(T0 - DAY) == 1
    assert [(x.tenant, x.prompt_tokens) for x in s.query(None, 0)] == [("acme", 2), ("beta", 3)]
    assert s.prune(T0 - DAY) == 0
    s.close()


def test_prune_drops_old_batch_ids(store: UsageStore) -> None:
    store.record("old", [row()])
    store._db.execute("UPDATE applied_batch SET applied_at = ?", (T0 - DAY,))
    store.record("new", [row()])
    store.prune(T0 - 60)
    assert store._db.execute("SELECT batch_id FROM applied_batch").fetchall() == [("new",)]


# -- recorder -------------------------------------------------------------------------------
class FakeLedger:
    """An async ``send`` over a real store that fails the next ``fail`` calls."""

    def __init__(self) -> None:
        self.store = UsageStore(":memory:")
        self.calls: list[tuple[str, int]] = []
        self.fail = 0
        self.sent = asyncio.Event()

    async def send(self, batch_id: str, rows: list[UsageRow]) -> bool:
        self.calls.append((batch_id, len(rows)))
        if self.fail:
            self.fail -= 1
            raise ConnectionError("ledger down")
        applied = self.store.record(batch_id, rows)
        self.sent.set()
        return applied


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_recorder_aggregates_adds_into_one_row_per_key() -> None:
    ledger, clock = FakeLedger(), Clock()
    rec = UsageRecorder(ledger.send, flush_interval_s=60, clock=clock)
    for i in range(1000):
        rec.add("acme", "m1", 10, 5, 0.001)
        if i % 10 == 0:
            rec.add("acme", "m2", 1, 1, 0.5)
    clock.t = T0 + 61
    rec.add("beta", "m1", 7, 0, 0)
    assert rec.buffered_rows == 3
    assert await rec.flush() is True
    assert ledger.calls == [(ledger.calls[0][0], 3)]
    assert rec.buffered_rows == 0 and rec.sent_batches == 1
    assert as_tuples(ledger.store.query(None, 0)) == [
        ("acme", "m1", 1000, 10_000, 5000, 1.0),
        ("acme", "m2", 100, 100, 100, 50.0),
        ("beta", "m1", 1, 7, 0, 0.0),
    ]
    buckets = ledger.store._db.execute("SELECT DISTINCT minute_start FROM usage_minute ORDER BY 1").fetchall()
    assert buckets == [(T0,), (T0 + 60,)]
    assert await rec.flush() is True and len(ledger.calls) == 1  # nothing to send, no call
    await rec.close()


async def test_recorder_retries_failed_send_with_same_batch_id() -> None:
    ledger = FakeLedger()
    rec = UsageRecorder(ledger.send, flush_interval_s=60, clock=Clock())
    rec.add("acme", "m1", 10, 5, 0.25)
    ledger.fail = 2
    assert await rec.flush() is False
    rec.add("acme", "m1", 1, 1, 0.25)  # arrives during the outage: a new batch, same key
    assert await rec.flush() is False
    assert rec.buffered_rows == 2
    assert await rec.flush() is True
    first, second = ledger.calls[0][0], ledger.calls[3][0]
    assert [c[0] for c in ledger.calls] == [first, first, first, second]
    assert first != second and len(first) == 32
    assert as_tuples(ledger.store.query(None, 0)) == [("acme", "m1", 2, 11, 6, 0.5)]


async def test_recorder_resend_after_lost_reply_is_counted_once() -> None:
    ledger = FakeLedger()
    lost = {"n": 1}

    async def send(batch_id: str, rows: list[UsageRow]) -> bool:
        applied = await ledger.send(batch_id, rows)
        if lost["n"]:  # the ledger stored it, but the reply never came back
            lost["n"] -= 1
            raise TimeoutError("reply lost")
        return applied

    rec = UsageRecorder(send, flush_interval_s=60, clock=Clock())
    rec.add("acme", "m1", 10, 5, 0.25)
    assert await rec.flush() is False
    assert await rec.flush() is True
    assert ledger.calls[0][0] == ledger.calls[1][0]
    assert as_tuples(ledger.store.query(None, 0)) == [("acme", "m1", 1, 10, 5, 0.25)]


async def test_recorder_drops_rejected_batch_and_goes_on() -> None:
    sent: list[str] = []

    async def send(batch_id: str, rows: list[UsageRow]) -> None:
        sent.append(batch_id)
        if len(sent) == 1:
            raise InvalidRequestError("rows[0].requests must be ...", param="rows[0].requests")

    rec = UsageRecorder(send, flush_interval_s=60, clock=Clock())
    rec.add("acme", "m1", 1, 1, 0)
    assert await rec.flush() is True  # rejected, dropped: retrying cannot help
    assert rec.dropped_rows == 1 and rec.buffered_rows == 0
    rec.add("acme", "m1", 1, 1, 0)
    assert await rec.flush() is True
    assert len(sent) == 2 and sent[0] != sent[1]


async def test_recorder_flushes_in_background_and_on_close() -> None:
    ledger = FakeLedger()
    rec = UsageRecorder(ledger.send, flush_interval_s=0.01)
    rec.add("acme", "m1", 3, 4, 0.1)  # starts the task lazily
    await asyncio.wait_for(ledger.sent.wait(), timeout=5)
    assert as_tuples(ledger.store.query(None, 0)) == [("acme", "m1", 1, 3, 4, 0.1)]

    ledger2 = FakeLedger()
    rec2 = UsageRecorder(ledger2.send, flush_interval_s=60)
    rec2.start()
    rec2.add("beta", "m1", 1, 2, 0.2)
    assert ledger2.calls == []
    assert await rec2.close() is True
    assert as_tuples(ledger2.store.query(None, 0)) == [("beta", "m1", 1, 1, 2, 0.2)]
    await rec.close()
    assert rec._task is None and rec2._task is None


async def test_recorder_close_keeps_batch_when_ledger_is_down() -> None:
    ledger = FakeLedger()
    rec = UsageRecorder(ledger.send, flush_interval_s=60, clock=Clock())
    rec.add("acme", "m1", 1, 1, 0)
    ledger.fail = 1
    assert await rec.close() is False
    assert rec.buffered_rows == 1
    assert await rec.flush() is True
    assert ledger.calls[0][0] == ledger.calls[1][0]


async def test_recorder_send_timeout_counts_as_failure() -> None:
    hang = asyncio.Event()
    calls: list[str] = []

    async def send(batch_id: str, rows: list[UsageRow]) -> None:
        calls.append(batch_id)
        if len(calls) == 1:
            await hang.wait()

    rec = UsageRecorder(send, flush_interval_s=60, send_timeout_s=0.05, clock=Clock())
    rec.add("acme", "m1", 1, 1, 0)
    assert await rec.flush() is False
    assert await rec.flush() is True
    assert calls[0] == calls[1]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_recorder_buffer_bound_drops_oldest_with_one_warning() -> None:
    # a handler on the module's logger itself: Serve's local testing mode, run earlier in
    # the same process, may stop records from propagating to pytest's caplog
    caplog = _Records()
    logging.getLogger("services.usage.recorder").addHandler(caplog)
    ledger, clock = FakeLedger(), Clock()
    rec = UsageRecorder(ledger.send, flush_interval_s=60, max_buffered_rows=3, clock=clock)
    ledger.fail = 100
    for minute in range(5):  # one row per minute: rows for minutes 0..4
        clock.t = T0 + 60 * minute
        rec.add("acme", "m1", minute + 1, 0, 0)
        assert await rec.flush() is False  # each minute's row is cut into its own pending batch
    assert rec.buffered_rows == 3 and rec.dropped_rows == 2
    drops = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelname == "WARNING"
    # the open buckets alone over the bound: the oldest minute goes first
    for tenant in ("t1", "t2"):
        rec.add(tenant, "m1", 100, 0, 0)
    assert rec.buffered_rows == 3 and rec.dropped_rows == 4
    logging.getLogger("services.usage.recorder").removeHandler(caplog)
    ledger.fail = 0
    assert await rec.flush() is True
    kept = ledger.store._db.execute(
        "SELECT (minute_start - ?) / 60, tenant, prompt_tokens FROM usage_minute ORDER BY 1, 2", (T0,)
    ).fetchall()
    assert kept == [(4, "acme", 5), (4, "t1", 100), (4, "t2", 100)]


def test_recorder_rejects_bad_input() -> None:
    rec = UsageRecorder(FakeLedger().send, flush_interval_s=1)
    with pytest.raises(
        ValueError, match=r"prompt_tokens must be an integer between 0 and 2\*\*53 \(got -1\)"
    ):
        rec.add("acme", "m1", -1, 0, 0)
    with pytest.raises(ValueError, match="cost_usd must be a finite number >= 0"):
        rec.add("acme", "m1", 1, 0, -0.5)
    with pytest.raises(ValueError, match="tenant must be a non-empty string"):
        rec.add("", "m1", 1, 0, 0)
    rec.add("acme", "m1", 1, 0, 0)  # outside a loop: buffered, no task
    with pytest.raises(ValueError, match="completion_tokens"):
        rec.add("acme", "m1", 1, -3, 0)  # an existing key is checked too, and left unchanged
    assert rec.buffered_rows == 1 and rec._open[(floor_to_minute(rec._clock()), "acme", "m1")].requests == 1
    with pytest.raises(ValueError, match="flush_interval_s must be > 0"):
        UsageRecorder(FakeLedger().send, flush_interval_s=0)


# -- deployment -----------------------------------------------------------------------------
def ledger_class(config: dict[str, object], clock: Clock, data_dir: str | None = None) -> UsageLedger:
    # the class under @serve.deployment, called directly (no Serve, no Ray)
    cls = UsageLedger.func_or_class
    return cls(config, data_dir=data_dir, clock=clock)  # type: ignore[no-any-return]


async def test_ledger_records_queries_and_checks_health(tmp_path: Path) -> None:
    clock = Clock(T0)
    ledger = ledger_class({"retention_days": 1}, clock, data_dir=str(tmp_path))
    assert ledger.store.path == str(tmp_path / "usage.sqlite")
    assert await ledger.record("b1", [row(ts=T0 - 2 * DAY), row(ts=T0), row(tenant="beta", ts=T0)]) is True
    assert await ledger.record("b1", [row(ts=T0)]) is False
    assert await ledger.query("acme", T0) == [
        {
            "tenant": "acme",
            "model": "m1",
            "requests": 1,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "cost_usd": 0.01,
        }
    ]
    assert [r["tenant"] for r in await ledger.query(None, 0)] == ["acme", "beta"]
    assert (await ledger.query("acme", 0))[0]["requests"] == 2
    await ledger.check_health()
    clock.t = T0 + 3601  # the hourly prune runs on the next call
    await ledger.check_health()
    assert (await ledger.query("acme", 0))[0]["requests"] == 1
    with pytest.raises(InvalidRequestError) as exc:
        await ledger.query(None, 10, 5)
    assert (exc.value.param, exc.value.value) == ("until", 5)
    with pytest.raises(InvalidRequestError) as exc:
        await ledger.record("b2", [row(), row(prompt=-4)])
    assert (exc.value.param, exc.value.value) == ("rows[1].prompt_tokens", -4)
    ledger.store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        await ledger.check_health()


async def test_ledger_prunes_on_start_and_serializes_calls(tmp_path: Path) -> None:
    path = str(tmp_path / "u.sqlite")
    s = UsageStore(path)
    s.record("old", [row(ts=T0 - 100 * DAY)])
    s.record("new", [row(ts=T0 - DAY)])
    s.close()
    ledger = ledger_class({"path": path}, Clock(T0))  # 90 days kept
    assert [r["requests"] for r in await ledger.query("acme", 0)] == [1]
    # concurrent batches from many gateways: all applied, each once
    results = await asyncio.gather(*(ledger.record(f"g{i % 10}", [row(ts=T0, prompt=1)]) for i in range(40)))
    assert results.count(True) == 10
    assert (await ledger.query("acme", T0))[0]["prompt_tokens"] == 10
    ledger.store.close()


async def test_ledger_in_serve_local_testing_mode() -> None:
    from ray import serve

    handle = serve.run(
        UsageLedger.bind({"path": ":memory:"}), name="usage-unit", route_prefix=None, _local_testing_mode=True
    )
    assert await handle.record.remote("b1", [row(ts=T0), row(tenant="beta", ts=T0)]) is True
    assert await handle.record.remote("b1", [row(ts=T0)]) is False
    got = await handle.query.remote("beta", T0, None)
    assert [(r["tenant"], r["total_tokens"]) for r in got] == [("beta", 15)]
    with pytest.raises(InvalidRequestError, match=r"since must be a finite number >= 0 \(got -1\)"):
        await handle.query.remote(None, -1, None)
