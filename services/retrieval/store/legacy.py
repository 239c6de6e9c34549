"""The old embedded format (qdrant-client local mode): detection and migration into Qdrant Edge.

Before the Edge engine, the embedded store was qdrant-client's local mode at
``<path>/meta.json`` + ``<path>/collection/<name>/storage.sqlite``. Edge
collections live beside it under ``<path>/edge/``, so both can coexist while a
migration copies points — ids, payloads, dense and sparse vectors — without
re-embedding anything. A migrated collection is recorded in
``<path>/edge/migrated.json``; the old files are left in place for the user to
delete once satisfied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from services.retrieval.config import CollectionConfig

if TYPE_CHECKING:
    from services.retrieval.store.edge import EdgeStore

MARKER = "migrated.json"
BATCH = 256


def legacy_collections(root: str) -> list[str]:
    """Collections of a qdrant-client local-mode store at ``root`` (none if there is none)."""
    meta = os.path.join(root, "meta.json")
    if not os.path.isfile(meta):
        return []
    try:
        with open(meta, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    return sorted((data.get("collections") or {}).keys())


def _marker(root: str) -> str:
    return os.path.join(root, "edge", MARKER)


def migrated(root: str) -> dict[str, Any]:
    try:
        with open(_marker(root), encoding="utf-8") as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return {}


def unmigrated(root: str) -> list[str]:
    """Old-format collections at ``root`` not yet copied into Edge."""
    done = migrated(root)
    return [n for n in legacy_collections(root) if n not in done]


def _record(root: str, name: str, points: int) -> None:
    done = migrated(root)
    done[name] = {"points": points, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    tmp = _marker(root) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(done, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, _marker(root))


def migrate(
    store: EdgeStore,
    configs: dict[str, CollectionConfig] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, int]:
    """Copy every unmigrated old-format collection into ``store``; points copied, by collection.

    ``configs`` gives the platform's settings for collections it serves (HNSW,
    quantization, indexes); the stored vectors decide size, distance and whether
    sparse vectors exist. Idempotent: point ids are kept, so a re-run after a
    crash rewrites the same points. ``progress(name, done, total)`` is called per batch.
    """
    import qdrant_edge as qe
    from qdrant_client import QdrantClient

    from services.retrieval.store.base import DENSE, SPARSE
    from services.retrieval.store.edge import edge_payload

    pending = unmigrated(store.root)
    if not pending:
        return {}
    copied: dict[str, int] = {}
    client = QdrantClient(path=store.root)  # holds qdrant-client's own lock (<path>/.lock)
    try:
        for name in pending:
            params = client.get_collection(name).config.params
            vectors = params.vectors
            dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
            if dense is None:
                raise ValueError(
                    f"old collection {name!r} has no dense vector {DENSE!r}; it was not made by llmops"
                )
            hybrid = SPARSE in (params.sparse_vectors or {})
            base = (configs or {}).get(name) or CollectionConfig(name=name)
            cfg = base.model_copy(update={"distance": dense.distance.value.lower(), "hybrid": hybrid})
            store.ensure_collection(cfg, int(dense.size))
            total = int(client.count(name, exact=True).count)
            offset: Any = None
            done = 0
            while True:
                records, offset = client.scroll(
                    name, limit=BATCH, offset=offset, with_payload=True, with_vectors=True
                )
                points = []
                for r in records:
                    vec = r.vector if isinstance(r.vector, dict) else {}
                    out: dict[str, Any] = {DENSE: list(vec[DENSE])}
                    sp = vec.get(SPARSE)
                    if sp is not None:
                        out[SPARSE] = qe.SparseVector(list(sp.indices), list(sp.values))  # type: ignore[union-attr]
                    points.append(
                        qe.Point(id=str(r.id), vector=out, payload=edge_payload(dict(r.payload or {})))
                    )
                if points:
                    store.write_points(name, points)
                done += len(points)
                if progress is not None:
                    progress(name, done, total)
                if offset is None:
                    break
            if store.count(name) < total:
                raise RuntimeError(
                    f"migration of {name!r} copied {store.count(name)} of {total} points; run it again"
                )
            store.optimize(name)
            _record(store.root, name, total)
            copied[name] = total
    finally:
        client.close()
    return copied
