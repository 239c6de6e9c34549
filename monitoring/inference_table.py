"""The inference table: a sampled, redacted record per request, as Parquet partitioned by hour.

Beside the JSON request log (every request, no text by default), the gateway keeps
a *sample* of requests with their text: prompt and completion (redacted by
:func:`monitoring.redact.redact`), the retrieved chunks and citations of a RAG
model, latency, TTFT, tokens, cost and status. Continuous evaluation and drift
detection (``pipelines/continuous_eval``) read it.

Layout, under ``path`` (a local directory, or any pyarrow filesystem URL such as
``s3://bucket/prefix`` or ``gs://bucket/prefix``)::

    hour=2026-12-02T19/part-1764702000123-3f9a1c2d.parquet

A file is written under a name starting with ``.`` and renamed when complete, so
readers (``pyarrow.dataset`` skips ``.``/``_`` names) only ever see whole files,
and a file, once visible, never changes: a reader can checkpoint by file name.
Writing happens on one background thread that wakes every ``flush_interval_s``;
the request path only appends a dict to a queue. Hour partitions older than
``retention_hours`` are deleted by the same thread.

Sampling is decided per request from a hash of its id, at the rate configured for
its model and tenant, so it is reproducible and independent between replicas.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from monitoring.redact import redact

__all__ = [
    "SCHEMA",
    "InferenceTable",
    "InferenceTableConfig",
    "SampleRate",
    "hour_partition",
    "open_filesystem",
]

logger = logging.getLogger("llmops.inference_table")

PARTITION = "hour"
HOUR_FORMAT = "%Y-%m-%dT%H"

CITATION = pa.struct(
    [
        ("index", pa.int32()),
        ("doc_id", pa.string()),
        ("chunk_id", pa.string()),
        ("score", pa.float64()),
        ("source", pa.string()),
    ]
)

#: one row per sampled request; the hour partition is a directory, not a column
SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("tenant", pa.string()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("engine", pa.string()),
        ("route", pa.string()),
        ("status", pa.int32()),
        ("stream", pa.bool_()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("chunk_ids", pa.list_(pa.string())),
        ("chunk_texts", pa.list_(pa.string())),
        ("citations", pa.list_(CITATION)),
        ("latency_ms", pa.float64()),
        ("ttft_ms", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("error", pa.string()),
        # one {check, direction, result, labels?, score?, ms} per guardrail decision, as JSON
        ("guardrails", pa.string()),
    ]
)


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SampleRate(_StrictModel):
    """A sampling rate for one model, one tenant, or one model of one tenant."""

    model: str | None = Field(None, description="Model id (unset: any model).")
    tenant: str | None = Field(None, description="Tenant (unset: any tenant).")
    rate: float = Field(ge=0, le=1, description="Share of the matching requests recorded (0..1).")


class InferenceTableConfig(_StrictModel):
    """Sampled request records with their text, for continuous evaluation and drift."""

    enabled: bool = Field(True, description="Write the inference table.")
    path: str | None = Field(
        None,
        max_length=4096,
        description="Directory or pyarrow filesystem URL (s3://bucket/prefix, gs://...) the Parquet "
        "files go to. Default: <data_dir>/inference under `llmops up`.",
    )
    sample_rate: float = Field(
        1.0, ge=0, le=1, description="Share of requests recorded when no entry of `rates` matches."
    )
    rates: list[SampleRate] = Field(
        default_factory=list,
        description="Per model and/or tenant rates; the most specific match wins (model and tenant, "
        "then model, then tenant).",
    )
    retention_hours: int = Field(
        24 * 7, ge=0, le=24 * 3650, description="Hour partitions older than this are deleted (0: keep all)."
    )
    flush_interval_s: float = Field(
        5.0, gt=0, le=3600, description="How often the writer thread writes what was queued."
    )
    max_text_chars: int = Field(
        8000, ge=1, le=1_000_000, description="Longest prompt, completion or chunk kept (then truncated)."
    )
    max_queue: int = Field(
        100_000,
        ge=1,
        description="Records held in memory awaiting a write; beyond it records are dropped (and counted).",
    )


def hour_partition(ts: float) -> str:
    """``hour=YYYY-MM-DDTHH`` (UTC) of a Unix time."""
    return f"{PARTITION}={datetime.fromtimestamp(ts, UTC).strftime(HOUR_FORMAT)}"


def open_filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and root path of a directory or URL (created if missing)."""
    if "://" in path:
        fs, root = pafs.FileSystem.from_uri(path)
    else:
        fs, root = pafs.LocalFileSystem(), str(path)
    fs.create_dir(root, recursive=True)
    return fs, root.rstrip("/")


def sample_key(request_id: str) -> float:
    """A uniform number in [0, 1) from a request id: the same id is always in or out."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big") / 2**64


class InferenceTable:
    """Samples, redacts and writes request records (see the module docstring)."""

    def __init__(self, config: InferenceTableConfig, path: str | None = None) -> None:
        self.config = config
        target = path or config.path
        if target is None:
            raise ValueError("inference_table.path is not set (llmops up sets <data_dir>/inference)")
        self.fs, self.root = open_filesystem(target)
        self._rates = {(r.model, r.tenant): r.rate for r in config.rates}
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=config.max_queue)
        self.dropped = 0
        self.written = 0
        self._last_retention = 0.0
        self._thread = threading.Thread(target=self._run, name="llmops-inference-table", daemon=True)
        self._thread.start()

    # -- the request path ---------------------------------------------------------------
    def rate(self, model: str, tenant: str | None) -> float:
        for key in ((model, tenant), (model, None), (None, tenant)):
            if key in self._rates:
                return self._rates[key]
        return self.config.sample_rate

    def sampled(self, request_id: str, model: str, tenant: str | None) -> bool:
        rate = self.rate(model, tenant)
        return rate >= 1.0 or (rate > 0.0 and sample_key(request_id) < rate)

    def write(self, record: dict[str, Any]) -> bool:
        """Queue one record (raw text: it is redacted on the writer thread). False if dropped."""
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    # -- the writer thread --------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[dict[str, Any]] = []
            deadline = time.monotonic() + self.config.flush_interval_s
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            # whatever is already queued goes too
            while not stop:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                try:
                    self.flush_rows(batch)
                except Exception:
                    logger.warning("inference table: writing %d records failed", len(batch), exc_info=True)
            try:
                self._retention()
            except Exception:
                logger.warning("inference table: retention failed", exc_info=True)

    def _row(self, rec: dict[str, Any]) -> dict[str, Any]:
        limit = self.config.max_text_chars

        def text(value: Any) -> str | None:
            return None if value is None else redact(str(value)[:limit])

        chunks = list(rec.get("chunk_texts") or ())
        return {
            **{name: rec.get(name) for name in SCHEMA.names},
            "ts": datetime.fromtimestamp(float(rec["ts"]), UTC),
            "prompt": text(rec.get("prompt")),
            "completion": text(rec.get("completion")),
            "chunk_ids": list(rec.get("chunk_ids") or ()),
            "chunk_texts": [text(c) or "" for c in chunks],
            "citations": list(rec.get("citations") or ()),
        }

    def flush_rows(self, records: list[dict[str, Any]]) -> list[str]:
        """Write ``records`` now, one file per hour partition; returns the files written."""
        by_hour: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in records:
            by_hour[hour_partition(float(rec["ts"]))].append(self._row(rec))
        written = []
        for part, rows in sorted(by_hour.items()):
            table = pa.Table.from_pylist(rows, schema=SCHEMA)
            directory = f"{self.root}/{part}"
            self.fs.create_dir(directory, recursive=True)
            name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
            tmp, final = f"{directory}/.{name}.tmp", f"{directory}/{name}"
            with self.fs.open_output_stream(tmp) as out:
                pq.write_table(table, out, compression="zstd")
            self.fs.move(tmp, final)  # visible only once complete
            written.append(final)
            self.written += len(rows)
        return written

    def _retention(self, now: float | None = None) -> list[str]:
        """Delete hour partitions older than ``retention_hours`` (at most once a minute)."""
        hours = self.config.retention_hours
        now = time.time() if now is None else now
        if hours == 0 or now - self._last_retention < 60:
            return []
        self._last_retention = now
        return delete_expired(self.fs, self.root, hours, now)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued and stop the writer thread."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)


def delete_expired(fs: pafs.FileSystem, root: str, retention_hours: int, now: float) -> list[str]:
    """Delete the ``hour=`` partitions under ``root`` that ended more than ``retention_hours`` ago."""
    cutoff = datetime.fromtimestamp(now, UTC) - timedelta(hours=retention_hours)
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        name = info.base_name
        if info.type != pafs.FileType.Directory or not name.startswith(PARTITION + "="):
            continue
        try:
            start = datetime.strptime(name.split("=", 1)[1], HOUR_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            continue  # not ours
        if start + timedelta(hours=1) <= cutoff:
            fs.delete_dir(info.path)
            removed.append(info.path)
    return removed
