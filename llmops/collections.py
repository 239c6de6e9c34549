"""``llmops collections snapshot|restore``: shard snapshots of the embedded (Qdrant Edge) store.

A snapshot is the collection's Edge shard as a tar (segments, WAL, config): the
layout of a Qdrant shard snapshot, read back by ``qdrant_edge.EdgeShard.unpack_snapshot``.
Both commands open the store folder, so they run while the platform is stopped
(the folder admits one process); against a Qdrant server, use the server's own
snapshot API.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from llmops.config import LLMOpsConfig


def add_parser(subparsers: Any, load_config: Callable[[str | None], LLMOpsConfig]) -> None:
    c = subparsers.add_parser("collections", help="snapshot or restore a collection of the embedded store")
    sub = c.add_subparsers(dest="collections_command", required=True)
    snap = sub.add_parser("snapshot", help="write collection NAME to a shard snapshot file")
    snap.add_argument("name", help="collection")
    snap.add_argument("--out", help="snapshot file (default: <data_dir>/snapshots/NAME.snapshot)")
    rest = sub.add_parser("restore", help="replace (or create) collection NAME from a shard snapshot file")
    rest.add_argument("name", help="collection")
    rest.add_argument("file", help="snapshot file")
    for p in (snap, rest):
        p.add_argument(
            "--config", help="YAML config (default: $LLMOPS_CONFIG, ./llmops.yaml, built-in defaults)"
        )
        p.set_defaults(func=cmd_collections, load_config=load_config)


def cmd_collections(args: argparse.Namespace) -> int:
    from services.retrieval.store import MigrationRequiredError, StoreLockedError, open_store
    from services.retrieval.store.edge import EdgeStore

    try:
        cfg = args.load_config(args.config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.retrieval.vector_store.url:
        print(
            "error: the config names a Qdrant server; snapshot it with the server's API "
            "(POST /collections/NAME/snapshots)",
            file=sys.stderr,
        )
        return 2
    try:
        store = open_store(cfg.retrieval.vector_store, cfg.data_dir)
    except (StoreLockedError, MigrationRequiredError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assert isinstance(store, EdgeStore)
    with store:
        if args.collections_command == "snapshot":
            if not store.collection_exists(args.name):
                print(f"error: no collection {args.name!r} in {store.describe()}", file=sys.stderr)
                return 1
            out = args.out or os.path.join(cfg.data_dir, "snapshots", f"{args.name}.snapshot")
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            size = store.snapshot(args.name, out)
            points = store.count(args.name)
            print(f"wrote {out} ({size / 1e6:.1f} MB, {points:,} points of {args.name!r})")
            return 0
        if not os.path.isfile(args.file):
            print(f"error: no snapshot file {args.file}", file=sys.stderr)
            return 1
        try:
            points = store.restore(args.name, args.file)
        except Exception as exc:  # the engine's own message says what is wrong with the file
            print(f"error: {args.file} is not a restorable shard snapshot: {exc}", file=sys.stderr)
            return 1
        print(f"restored {args.name!r} from {args.file}: {points:,} points in {store.describe()}")
        return 0
