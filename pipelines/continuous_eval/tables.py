"""The files continuous evaluation reads and writes.

* the inference table (:mod:`monitoring.inference_table`): ``hour=<H>/part-*.parquet``
  under its root, on any pyarrow filesystem;
* the scores table, ``<out>/scores/hour=<H>/<same file name>``: one row per scored
  request, joinable with the inference table by ``request_id``; the Parquet
  metadata holds the source file's skipped and quarantined counts and the judge's
  tokens, so the file alone says everything the checkpoint needs (a crash between
  writing it and committing it loses nothing);
* the quarantine table, ``<out>/quarantine/hour=<H>/<file name>``: records that
  failed validation, with the names of the expectations they broke.

Every file is written under a hidden name and renamed when complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from monitoring.inference_table import PARTITION

__all__ = [
    "ScoredFile",
    "list_table_files",
    "read_records",
    "read_scores",
    "write_quarantine",
    "write_scores",
]

META_KEY = b"llmops.continuous_eval"
#: columns copied from the inference record into the scores table
CARRIED = (
    "request_id",
    "ts",
    "tenant",
    "model",
    "version",
    "engine",
    "route",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
)


@dataclass
class ScoredFile:
    """The scores of one inference-table file, as written (or found) on disk."""

    rel: str
    frame: pd.DataFrame
    skipped: int
    quarantined: int
    judge_tokens: dict[str, int] = field(default_factory=dict)
    judge_model: str | None = None

    @property
    def rows(self) -> int:
        return len(self.frame) + self.skipped + self.quarantined


def list_table_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """Complete data files under the table's hour partitions, oldest first (relative paths)."""
    out = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        if info.base_name.startswith((".", "_")):
            continue  # being written
        rel = info.path[len(root) :].lstrip("/")
        parts = rel.split("/")
        if len(parts) != 2 or not parts[0].startswith(PARTITION + "="):
            continue
        out.append(rel)
    return sorted(out)


def read_records(fs: pafs.FileSystem, root: str, rel: str) -> pd.DataFrame:
    """One inference-table file as a frame (list columns as Python lists)."""
    with fs.open_input_file(f"{root}/{rel}") as f:
        table = pq.read_table(f)
    frame = table.to_pandas(types_mapper=None)
    for col in ("chunk_ids", "chunk_texts", "citations"):
        if col in frame:
            frame[col] = frame[col].map(lambda v: list(v) if v is not None else [])
    return frame


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def scores_path(out: Path, rel: str) -> Path:
    return out / "scores" / rel


def write_scores(
    out: Path,
    rel: str,
    records: pd.DataFrame,
    scores: pd.DataFrame,
    skipped: int,
    quarantined: int,
    judge_tokens: dict[str, int],
    judge_model: str | None,
) -> ScoredFile:
    """Write one file's scores (the file's done marker) and return them as read back."""
    frame = records[[c for c in CARRIED if c in records]].reset_index(drop=True)
    if len(scores):
        if list(scores["request_id"]) != list(frame["request_id"]):
            raise RuntimeError(f"{rel}: scored records came back out of order")  # a bug, never data
        frame = pd.concat([frame, scores.drop(columns=["request_id"]).reset_index(drop=True)], axis=1)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if "prompt_embedding" in frame:
        i = table.schema.get_field_index("prompt_embedding")
        table = table.set_column(
            i, "prompt_embedding", pa.array(list(frame["prompt_embedding"]), type=pa.list_(pa.float32()))
        )
    meta = {
        "skipped": skipped,
        "quarantined": quarantined,
        "judge_tokens": judge_tokens,
        "judge_model": judge_model,
    }
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta)})
    _atomic_write(table, scores_path(out, rel))
    return ScoredFile(
        rel,
        frame.drop(columns=["prompt_embedding"], errors="ignore"),
        skipped,
        quarantined,
        judge_tokens,
        judge_model,
    )


def read_scores(out: Path, rel: str) -> ScoredFile | None:
    """A file's scores if a run wrote them (None: not scored yet)."""
    path = scores_path(out, rel)
    if not path.exists():
        return None
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {})[META_KEY])
    frame = table.drop_columns([c for c in ("prompt_embedding",) if c in table.column_names]).to_pandas()
    return ScoredFile(
        rel,
        frame,
        int(meta["skipped"]),
        int(meta["quarantined"]),
        dict(meta["judge_tokens"]),
        meta["judge_model"],
    )


def write_quarantine(out: Path, rel: str, rows: pd.DataFrame, failed: list[list[str]]) -> Path:
    """The records of ``rel`` that failed validation, with what they broke."""
    frame = rows.reset_index(drop=True).copy()
    frame["failed"] = [list(f) for f in failed]
    for col in frame.columns:  # what broke may be the type: keep the data, as text
        if frame[col].dtype == object and col not in ("failed", "chunk_ids", "chunk_texts", "citations"):
            frame[col] = frame[col].map(lambda v: None if v is None else str(v))
    path = out / "quarantine" / rel
    _atomic_write(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def read_scores_table(out: Path, columns: list[str] | None = None, filter: Any = None) -> pa.Table | None:
    """The whole scores table (None when nothing was scored yet)."""
    import pyarrow.dataset as ds

    root = out / "scores"
    if not root.is_dir():
        return None
    dataset = ds.dataset(str(root), format="parquet", partitioning="hive")
    # files differ: an empty one has no score columns, a judged one has judge_* columns
    schemas = [f.physical_schema for f in dataset.get_fragments()]
    if not schemas:
        return None
    schema = pa.unify_schemas([*schemas, dataset.schema], promote_options="permissive")
    dataset = ds.dataset(str(root), format="parquet", partitioning="hive", schema=schema)
    wanted = [c for c in (columns or dataset.schema.names) if c in dataset.schema.names]
    return dataset.to_table(columns=wanted, filter=filter)
