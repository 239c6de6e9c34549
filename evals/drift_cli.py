"""``llmops eval drift --reference A --current B``: prompt and scalar drift between two windows.

A and B are each a JSONL file (optionally gzipped), a Parquet file, or a folder of
Parquet files such as the inference table (``hour=YYYY-MM-DDTHH/part-*.parquet``,
read as a hive-partitioned dataset). Heavy modules (numpy, pyarrow, the encoder)
are imported inside the command, so ``llmops --help`` stays quick.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_SCALARS = "prompt_tokens,completion_tokens,latency_ms"


class InputError(ValueError):
    """A window that cannot be read or lacks a field; the message says which and why."""


def add_drift_parser(sub: Any, positive_int: Any) -> None:
    """Add ``drift`` to the ``llmops eval`` sub-commands (``sub``); sets ``func`` to :func:`cmd_drift`."""
    d = sub.add_parser(
        "drift",
        help="prompt-embedding and scalar drift between a reference window and the current one",
        description="Per group (default: model and tenant), embed the text field of both windows with "
        "the bundled all-MiniLM-L6-v2 and compare them: MMD² with a permutation p-value (drift when "
        "p < alpha), a domain-classifier AUC and the centroid cosine; plus the PSI of each scalar "
        "field (< 0.1 stable, 0.1 to 0.25 moderate, > 0.25 major). A group with fewer than "
        "--min-samples rows on a side is 'insufficient data', never 'no drift'. Exit status: 0 done, "
        "1 some group's prompts drifted (with --fail-on-drift; PSI is reported, not gated), 2 bad input.",
    )
    d.add_argument(
        "--reference", required=True, metavar="A", help="reference window: JSONL(.gz), Parquet file or folder"
    )
    d.add_argument(
        "--current", required=True, metavar="B", help="current window: JSONL(.gz), Parquet file or folder"
    )
    d.add_argument("--field", default="prompt", help="the text field to embed (default: prompt)")
    d.add_argument(
        "--group-by",
        default="model,tenant",
        help="comma-separated grouping fields (default: model,tenant; ''= one group); "
        "a field missing from a window is not grouped by",
    )
    d.add_argument(
        "--scalars",
        default=DEFAULT_SCALARS,
        help=f"comma-separated numeric fields for PSI (default: {DEFAULT_SCALARS})",
    )
    d.add_argument(
        "--min-samples", type=positive_int, default=100, help="fewest rows a side per group (default: 100)"
    )
    d.add_argument(
        "--permutations", type=positive_int, default=200, help="permutations of the MMD² test (default: 200)"
    )
    d.add_argument("--alpha", type=_alpha, default=0.05, help="significance level (default: 0.05)")
    d.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    d.add_argument("--fail-on-drift", action="store_true", help="exit 1 when any group's prompts drifted")
    d.set_defaults(func=cmd_drift)


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def _fields(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def read_rows(path: str, wanted: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of one window (only the ``wanted`` fields it has) and all of its field names.

    Raises:
        InputError: the path is missing, empty or unreadable; the message names it.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        parquet = p.is_dir() or p.suffix == ".parquet" or _magic(p, 4) == b"PAR1"
    except OSError as exc:  # e.g. no permission
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return _read_parquet(p, wanted) if parquet else _read_jsonl(p, wanted)


def _magic(p: Path, n: int) -> bytes:
    with p.open("rb") as f:
        return f.read(n)


def _read_parquet(p: Path, wanted: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(str(p), format="parquet", partitioning="hive" if p.is_dir() else None)
        if not dataset.files:
            raise InputError(f"{p}: no Parquet files in this folder")
        names = list(dataset.schema.names)
        table = dataset.to_table(columns=[c for c in names if c in wanted])
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{p}: cannot read as Parquet: {exc}") from None
    return table.to_pylist(), names


def _read_jsonl(p: Path, wanted: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    names: dict[str, None] = {}
    opener: Any = gzip.open if _magic(p, 2) == b"\x1f\x8b" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{p} line {i}: not JSON ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise InputError(f"{p} line {i}: expected a JSON object, got {type(rec).__name__}")
                names.update(dict.fromkeys(rec))
                rows.append({k: rec[k] for k in wanted if k in rec})
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"{p}: cannot read as JSONL: {exc}") from None
    return rows, list(names)


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_group(g: dict[str, Any], group_by: list[str], min_samples: int) -> str:
    """One line of the text report for a group of :func:`evals.drift.drift_report`."""
    e = g["embedding"]
    name = " ".join(f"{k}={g[k]}" for k in group_by) or "all"
    counts = f"n={e['n_reference']}/{e['n_current']}"
    if e["status"] == "insufficient_data":
        head = f"{name}: insufficient data ({counts}; need {min_samples} a side)"
    else:
        verdict = "DRIFT" if e["status"] == "drift" else "no drift"
        head = (
            f"{name}: {verdict} ({counts})  MMD²={_fmt(e['mmd2'], '.5f')} p={_fmt(e['p_value'])} "
            f"AUC={_fmt(e['domain_auc'], '.3f')} centroid cos={_fmt(e['centroid_cosine'])}"
        )
    psi = " ".join(f"{k}={_fmt(v, '.3f')}" for k, v in g["psi"].items())
    return f"{head}  PSI {psi}" if psi else head


def cmd_drift(args: argparse.Namespace) -> int:
    """``llmops eval drift``: read both windows, embed, compare, print; see :func:`add_drift_parser`."""
    group_by, scalars = _fields(args.group_by), _fields(args.scalars)
    wanted = [args.field, *group_by, *scalars]
    try:
        windows = []
        for role, path in (("reference", args.reference), ("current", args.current)):
            rows, names = read_rows(path, wanted)
            if args.field not in names:
                shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") or "none"
                raise InputError(
                    f"the {role} window ({path}) has no field {args.field!r}; its fields: {shown}"
                )
            windows.append((role, rows, names))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for role, _rows, names in windows:
        for col in [c for c in group_by if c not in names]:
            print(f"note: the {role} window has no field {col!r}: not grouping by it", file=sys.stderr)
            group_by.remove(col)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from rich.console import Console

    from evals.drift import drift_report
    from services.embeddings.config import EmbeddingModelConfig
    from services.embeddings.encoder import Encoder

    err = Console(stderr=True)
    emb = EmbeddingModelConfig()
    with err.status(f"loading embedding model {emb.name} ..."):
        # the served model and backend, so the vectors are the platform's own
        encoder = Encoder.from_config(emb)
    (_, ref_rows, _), (_, cur_rows, _) = windows
    try:
        with err.status("embedding and comparing ..."):
            groups = drift_report(
                ref_rows,
                cur_rows,
                encoder,
                group_by=group_by,
                text_field=args.field,
                scalar_fields=scalars,
                min_samples=args.min_samples,
                permutations=args.permutations,
                alpha=args.alpha,
            )
    except ValueError as exc:  # e.g. a scalar field holding text
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for g in groups:
        print(format_group(g, group_by, args.min_samples))
    if not groups or all(g["embedding"]["status"] == "insufficient_data" for g in groups):
        err.print(f"warning: no group has {args.min_samples} rows on both sides: drift is unmeasured")
    if args.json:
        report = {
            "reference": args.reference,
            "current": args.current,
            "text_field": args.field,
            "group_by": group_by,
            "scalar_fields": scalars,
            "min_samples": args.min_samples,
            "permutations": args.permutations,
            "alpha": args.alpha,
            "embedding_model": emb.name,
            "groups": groups,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
        err.print(f"wrote {args.json}")
    drifted = any(g["embedding"]["status"] == "drift" for g in groups)
    return 1 if args.fail_on_drift and drifted else 0
