"""``llmops eval ...``: the evaluation commands.

``llmops/cli.py`` mounts them with ``add_parser(subparsers, load_config=load_config)``.
The config loader is passed in rather than imported because imports run
downward only (DESIGN.md): ``evals`` never imports ``llmops``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.config import ServicesConfig
from services.embeddings.config import EmbeddingModelConfig
from services.retrieval.config import CollectionConfig

# path (or None: $LLMOPS_CONFIG, ./llmops.yaml, defaults) -> the validated config;
# raises ValueError (e.g. llmops.config.ConfigError) on a bad file
ConfigLoader = Callable[[str | None], ServicesConfig]


def add_parser(subparsers: Any, load_config: ConfigLoader | None = None) -> argparse.ArgumentParser:
    """Add ``eval`` (with ``retrieval``) to an ``argparse`` sub-parser set.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
        load_config: turns ``--config`` into the config; without it, ``--config``
            is refused and the built-in defaults are evaluated.

    Each command sets ``func``: call ``args.func(args)`` for its exit code.
    """
    ev = subparsers.add_parser("eval", help="evaluate the platform on the shipped datasets")
    sub = ev.add_subparsers(dest="eval_command", required=True)

    r = sub.add_parser(
        "retrieval",
        help="recall@k, MRR and nDCG of dense, BM25 and hybrid search on SQuAD 2.0 (fresh temporary store)",
    )
    r.add_argument("--config", help="YAML config (default: $LLMOPS_CONFIG, ./llmops.yaml, built-in defaults)")
    r.add_argument(
        "--collection",
        help="collection whose chunking and distance to evaluate (default: the first configured)",
    )
    r.add_argument(
        "--limit", type=_positive_int, help="evaluate N questions spread over the set (default: all)"
    )
    r.add_argument("--json", metavar="FILE", help="also write the full report as JSON to FILE")
    r.add_argument("--markdown", action="store_true", help="print a README-ready Markdown table instead")
    r.add_argument("--work-dir", help="parent folder of the temporary store (default: the system temp dir)")
    r.set_defaults(func=functools.partial(cmd_eval_retrieval, load_config=load_config))

    from evals.run_cli import add_run_parsers

    add_run_parsers(sub, _positive_int)
    from evals.drift_cli import add_drift_parser

    add_drift_parser(sub, _positive_int)
    return ev


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def resolve_models(
    cfg: ServicesConfig | None, collection: str | None
) -> tuple[CollectionConfig, EmbeddingModelConfig]:
    """The collection to evaluate and its embedding model, from ``cfg`` or the built-in defaults.

    Raises:
        ValueError: ``collection`` is not configured, or there is no embedding model.
    """
    if cfg is None:
        if collection is not None:
            raise ValueError(f"--collection {collection!r} needs a config that defines it (--config)")
        return CollectionConfig(name="eval"), EmbeddingModelConfig()
    names = [c.name for c in cfg.retrieval.collections]
    if collection is not None:
        coll = cfg.retrieval.collection(collection)
        if coll is None:
            raise ValueError(f"collection {collection!r} is not in the config (configured: {names})")
    else:
        coll = cfg.retrieval.collections[0] if cfg.retrieval.collections else CollectionConfig(name="eval")
    if not cfg.embeddings:
        raise ValueError("the config has no embedding model under 'embeddings'")
    by_name = {e.name: e for e in cfg.embeddings}
    emb = by_name.get(coll.embedding_model or "", cfg.embeddings[0])
    return coll, emb


def cmd_eval_retrieval(args: argparse.Namespace, load_config: ConfigLoader | None = None) -> int:
    """``llmops eval retrieval``: run the eval, print the table, optionally write JSON."""
    try:
        if args.config and load_config is None:
            raise ValueError("--config is not supported here (no config loader was given)")
        cfg = load_config(args.config) if load_config is not None else None
        coll, emb = resolve_models(cfg, args.collection)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from rich.console import Console

    from evals.retrieval import evaluate_retrieval
    from services.embeddings.encoder import Encoder

    err = Console(stderr=True)
    with err.status(f"loading embedding model {emb.name} ..."):
        # the served forward pass (backend, precision), so the figures are the platform's own
        encoder = Encoder.from_config(emb)
    report = evaluate_retrieval(
        encoder,
        coll,
        limit=args.limit,
        work_dir=args.work_dir,
        embedding_model=emb.name,
        progress=sys.stderr.isatty(),
    )
    if args.markdown:
        print(report.to_markdown())
    else:
        out = Console()
        out.print(report.to_table())
        for note in report.notes:
            out.print(f"- {note}", highlight=False)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(report.to_json() + "\n")
        err.print(f"wrote {args.json}")
    return 0
