"""The embedded backend: Qdrant's own engine in-process (PyPI ``qdrant-edge-py``).

One Edge shard per collection under ``<path>/edge/<collection>/`` (segments,
WAL, ``edge_config.json``). Every collection setting takes effect: distance,
HNSW ``m`` / ``ef_construct`` / ``full_scan_threshold``, per-request ``hnsw_ef``,
scalar / product / binary quantization with rescoring and oversampling,
payload indexes (``tenant`` as a tenant index, ``doc_id``, and the configured
metadata fields), on-disk vectors and payloads, sparse vectors with IDF, RRF
fusion and ACORN inside one query.

The engine has no background optimizer: data written since the last
:meth:`EdgeStore.optimize` sits in a plain segment that is searched exactly
(correct, just not HNSW-fast). Bulk loads optimize once at the end; the
retrieval deployment optimizes in the background after writes.

The folder admits one process: the store holds an exclusive lock on
``<path>/edge/.lock`` (a second process gets :class:`StoreLockedError`). Within a
process, Edge shards are safe to call from several threads; the engine releases
the GIL while it searches, so callers run searches in a thread pool.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np
import qdrant_edge as qe

from services.retrieval.config import CollectionConfig, QuantizationConfig, VectorStoreConfig
from services.retrieval.filters import Condition, FilterSpec
from services.retrieval.store import legacy
from services.retrieval.store.base import (
    BATCH,
    DENSE,
    SPARSE,
    BaseStore,
    CollectionMismatchError,
    IndexStatus,
    MigrationRequiredError,
    QueryPlan,
    ScoredRow,
    StoreLockedError,
    log,
    named_vectors,
    not_found,
)
from services.retrieval.types import INJECTION_FLAGGED, Chunk, SparseVector

_DISTANCE = {
    "cosine": qe.Distance.Cosine,
    "dot": qe.Distance.Dot,
    "euclid": qe.Distance.Euclid,
    "manhattan": qe.Distance.Manhattan,
}
_DISTANCE_NAME = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid", "manhattan": "Manhattan"}
_INDEX_TYPE = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
    "datetime": qe.PayloadSchemaType.Datetime,
}
_COMPRESSION = {
    "x4": qe.CompressionRatio.X4,
    "x8": qe.CompressionRatio.X8,
    "x16": qe.CompressionRatio.X16,
    "x32": qe.CompressionRatio.X32,
    "x64": qe.CompressionRatio.X64,
}
_BINARY = {
    "one_bit": qe.BinaryQuantizationEncoding.OneBit,
    "one_and_half_bits": qe.BinaryQuantizationEncoding.OneAndHalfBits,
    "two_bits": qe.BinaryQuantizationEncoding.TwoBits,
}
CONFIG_FILE = "edge_config.json"
# qdrant-edge-py 0.9.0 reads a Python bool in MatchValue as an integer (bool is an int subclass),
# so `flag == true` never matches a stored boolean. Every boolean payload value is therefore also
# written as a keyword "<key>=true|false" under BOOL_TERMS, and boolean conditions match that.
BOOL_TERMS = "_bool_terms"


def bool_terms(payload: dict[str, Any], prefix: str = "") -> list[str]:
    """Keyword terms of every boolean in ``payload`` (nested objects and arrays included)."""
    out: list[str] = []
    for k, v in payload.items():
        key = f"{prefix}{k}"
        items = v if isinstance(v, list) else [v]
        for item in items:
            if isinstance(item, bool):
                out.append(f"{key}={'true' if item else 'false'}")
            elif isinstance(item, dict):
                out.extend(bool_terms(item, key + "."))
    return sorted(set(out))


def edge_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload as written to Edge: the chunk's own, plus :data:`BOOL_TERMS` when it holds booleans."""
    terms = bool_terms(payload)
    return {**payload, BOOL_TERMS: terms} if terms else payload


def _quantization(q: QuantizationConfig | None) -> Any:
    if q is None:
        return None
    if q.kind == "scalar":
        return qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8, quantile=q.scalar_quantile, always_ram=q.always_ram
        )
    if q.kind == "product":
        return qe.ProductQuantizationConfig(
            compression=_COMPRESSION[q.product_compression], always_ram=q.always_ram
        )
    return qe.BinaryQuantizationConfig(always_ram=q.always_ram, encoding=_BINARY[q.binary_encoding])


def edge_config(cfg: CollectionConfig, dimension: int) -> qe.EdgeConfig:
    """The Edge shard config of a collection: every setting of ``cfg`` mapped to the engine's."""
    dense = qe.EdgeVectorParams(
        size=dimension,
        distance=_DISTANCE[cfg.distance],
        memory=qe.Memory.Cold if cfg.on_disk else qe.Memory.Cached,
    )
    sparse = {SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if cfg.hybrid else None
    return qe.EdgeConfig(
        vectors={DENSE: dense},
        sparse_vectors=sparse,
        hnsw_config=qe.HnswIndexConfig(
            m=cfg.hnsw_m, ef_construct=cfg.hnsw_ef_construct, full_scan_threshold=cfg.full_scan_threshold_kb
        ),
        quantization_config=_quantization(cfg.quantization),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=cfg.indexing_threshold_kb),
        payload_memory=qe.Memory.Cold if cfg.on_disk_payload else qe.Memory.Cached,
    )


def _condition(c: Condition) -> qe.FieldCondition:
    if c.kind == "match" and isinstance(c.value, bool):
        term = f"{c.key}={'true' if c.value else 'false'}"
        return qe.FieldCondition(key=BOOL_TERMS, match=qe.MatchValue(term))
    if c.kind == "match":
        return qe.FieldCondition(key=c.key, match=qe.MatchValue(c.value))
    if c.kind == "any":
        return qe.FieldCondition(key=c.key, match=qe.MatchAny(c.value))
    if c.kind == "range":
        return qe.FieldCondition(key=c.key, range=qe.RangeFloat(**c.value))
    if c.kind == "datetime_range":
        return qe.FieldCondition(key=c.key, range=qe.RangeDateTime(**c.value))
    return qe.FieldCondition(key=c.key, match=qe.MatchText(c.value))


#: the ingestion-flagged chunks, as their boolean term (keyword-indexed under BOOL_TERMS)
FLAGGED_TERM = f"{INJECTION_FLAGGED}=true"


def edge_filter(spec: FilterSpec) -> qe.Filter:
    tenant = qe.FieldCondition(key="tenant", match=qe.MatchValue(spec.tenant))
    # must_not on the indexed term: a point without the flag (never scanned) is kept
    flagged: list[Any] = [qe.FieldCondition(key=BOOL_TERMS, match=qe.MatchValue(FLAGGED_TERM))]
    return qe.Filter(
        must=[tenant, *(_condition(c) for c in spec.conditions)],
        must_not=flagged if spec.exclude_flagged else None,
    )


def _search_params(plan: QueryPlan) -> qe.SearchParams:
    if plan.quantization is None:
        quant = qe.QuantizationSearchParams(ignore=True)
    else:
        quant = qe.QuantizationSearchParams(rescore=plan.quantization[0], oversampling=plan.quantization[1])
    acorn = qe.AcornSearchParams(enable=True) if plan.acorn else None
    return qe.SearchParams(hnsw_ef=plan.ef, exact=plan.exact, quantization=quant, acorn=acorn)


def _own(payload: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(payload or {})
    out.pop(BOOL_TERMS, None)
    return out


def _sparse(v: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(list(v.indices), list(v.values))


class EdgeStore(BaseStore):
    """Collections as Qdrant Edge shards under one folder (see the module docstring)."""

    backend = "edge"

    def __init__(self, config: VectorStoreConfig, data_dir: str, *, allow_legacy: bool = False) -> None:
        super().__init__(config)
        self.root = os.path.abspath(os.path.expanduser(config.path or os.path.join(data_dir, "qdrant")))
        self.dir = os.path.join(self.root, "edge")
        os.makedirs(self.dir, exist_ok=True)
        self._lockfile: IO[str] | None = open(os.path.join(self.dir, ".lock"), "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._release()
            raise StoreLockedError(
                f"the embedded vector store at {self.dir} is held by another process "
                "(e.g. a running `llmops up`); stop it, use its API, or point "
                "retrieval.vector_store.url at a Qdrant server for shared access"
            ) from None
        pending = legacy.unmigrated(self.root)
        if pending and not allow_legacy:
            self._release()
            raise MigrationRequiredError(
                f"{self.root} holds collection(s) {', '.join(pending)} in the old embedded format "
                "(qdrant-client local mode); run `llmops ingest --migrate` to copy them into the "
                "Qdrant Edge engine (nothing is re-embedded; `llmops up` does it automatically)"
            )
        self._shards: dict[str, qe.EdgeShard] = {}
        self._lock = threading.RLock()  # guards opening and closing shards; calls need no lock

    def _release(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing the descriptor drops the flock
            self._lockfile = None

    def describe(self) -> str:
        return f"embedded Qdrant Edge at {self.dir}"

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def close(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.flush()
                shard.close()
            self._shards.clear()
            self._release()

    # -- collections ----------------------------------------------------------------------------
    def collections(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir) if self.collection_exists(n))

    def collection_exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self._path(name), CONFIG_FILE))

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._lock:
            if name not in self._shards:
                if not self.collection_exists(name):
                    raise not_found(name)
                self._shards[name] = qe.EdgeShard.load(self._path(name))
            return self._shards[name]

    def stored_config(self, name: str) -> dict[str, Any]:
        """The shard's persisted ``edge_config.json``."""
        with open(os.path.join(self._path(name), CONFIG_FILE), encoding="utf-8") as f:
            return dict(json.load(f))

    def _check(self, cfg: CollectionConfig, dimension: int) -> None:
        stored = self.stored_config(cfg.name)
        dense = (stored.get("vectors") or {}).get(DENSE)
        if dense is None:
            raise CollectionMismatchError(
                f"collection {cfg.name!r} has no dense vector named {DENSE!r}; it was not created by "
                "llmops: use another collection name or delete it"
            )
        want = _DISTANCE_NAME[cfg.distance]
        if dense.get("size") != dimension or dense.get("distance") != want:
            raise CollectionMismatchError(
                f"collection {cfg.name!r} exists with {dense.get('size')}-d {dense.get('distance')} vectors, but "
                f"the config needs {dimension}-d {want} (embedding model or distance changed?); "
                "use a new collection name, or delete and re-ingest this one"
            )
        if cfg.hybrid and SPARSE not in (stored.get("sparse_vectors") or {}):
            raise CollectionMismatchError(
                f"collection {cfg.name!r} has no sparse vector {SPARSE!r} but the config sets hybrid: true; "
                "set hybrid: false for it, or delete and re-ingest it"
            )

    def _ensure(self, cfg: CollectionConfig, dimension: int) -> bool:
        with self._lock:
            path = self._path(cfg.name)
            econf = edge_config(cfg, dimension)
            if self.collection_exists(cfg.name):
                self._check(cfg, dimension)
                old = self._shards.pop(cfg.name, None)
                if old is not None:
                    old.close()
                try:
                    # loading with a config persists its index settings (HNSW, quantization,
                    # on-disk placement): they take effect from the next optimize
                    self._shards[cfg.name] = qe.EdgeShard.load(path, econf)
                except Exception as e:
                    raise CollectionMismatchError(
                        f"collection {cfg.name!r}: the engine refused its new settings ({e}); "
                        "use a new collection name, or delete and re-ingest this one"
                    ) from e
                created = False
            else:
                shutil.rmtree(path, ignore_errors=True)  # the remains of a create that crashed
                self._shards[cfg.name] = qe.EdgeShard.create(path, econf)
                log.info(
                    "created collection %r (%d-d %s) in %s",
                    cfg.name,
                    dimension,
                    cfg.distance,
                    self.describe(),
                )
                created = True
            self._payload_indexes(self._shards[cfg.name], cfg)
            return created

    @staticmethod
    def _payload_indexes(shard: qe.EdgeShard, cfg: CollectionConfig) -> None:
        have = set(shard.info().payload_schema)
        wanted: dict[str, Any] = {
            "tenant": qe.KeywordIndexParams(is_tenant=True),  # co-locates each tenant's points
            "doc_id": qe.PayloadSchemaType.Keyword,
            # every boolean, injection_flagged included (the exclude_flagged filter), as a keyword term
            BOOL_TERMS: qe.PayloadSchemaType.Keyword,
        }
        for field, kind in cfg.payload_indexes.items():
            key = f"metadata.{field}"
            if kind == "text":
                wanted[key] = qe.TextIndexParams(tokenizer=qe.TokenizerType.Word, lowercase=True)
            else:
                wanted[key] = _INDEX_TYPE[kind]
        for key, schema in wanted.items():
            if key not in have:
                shard.update(qe.UpdateOperation.create_field_index(key, schema))

    def optimize(self, collection: str) -> bool:
        return bool(self._shard(collection).optimize())

    def index_status(self, collection: str) -> IndexStatus:
        info = self._shard(collection).info()
        return IndexStatus(info.points_count, info.indexed_vectors_count, info.segments_count)

    # -- writes and reads -------------------------------------------------------------------------
    def _write(
        self,
        collection: str,
        chunks: Sequence[Chunk],
        dense: np.ndarray,
        sparse: Sequence[SparseVector] | None,
    ) -> None:
        points = [
            qe.Point(id=c.id, vector=v, payload=edge_payload(c.payload()))
            for c, v in zip(chunks, named_vectors(dense, sparse, _sparse), strict=True)
        ]
        self._shard(collection).update(qe.UpdateOperation.upsert_points(points))

    def write_points(self, collection: str, points: list[qe.Point]) -> None:
        """Raw Edge points (the migration path); payloads must come from :func:`edge_payload`."""
        self._shard(collection).update(qe.UpdateOperation.upsert_points(points))

    def _scroll(self, collection: str, spec: FilterSpec, with_doc_id: bool) -> Iterator[tuple[str, str]]:
        shard = self._shard(collection)
        flt = edge_filter(spec)
        payload: Any = ["doc_id"] if with_doc_id else False
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset, limit=BATCH, filter=flt, with_payload=payload, with_vector=False
                )
            )
            for r in records:
                yield str(r.id), str((r.payload or {}).get("doc_id", ""))
            if offset is None:
                return

    def delete_points(self, collection: str, ids: Sequence[str] | set[str]) -> None:
        ordered = sorted(ids)
        shard = self._shard(collection)
        for lo in range(0, len(ordered), BATCH):
            shard.update(qe.UpdateOperation.delete_points(list(ordered[lo : lo + BATCH])))

    def count(self, collection: str, tenant: str | None = None) -> int:
        flt = edge_filter(FilterSpec(tenant)) if tenant is not None else None
        return int(self._shard(collection).count(qe.CountRequest(exact=True, filter=flt)))

    def _query(self, collection: str, plan: QueryPlan) -> list[ScoredRow]:
        flt = edge_filter(plan.spec)
        params = _search_params(plan)
        if plan.hybrid:
            assert plan.dense is not None and plan.sparse is not None
            req = qe.QueryRequest(
                limit=plan.limit,
                prefetches=[
                    # the filter rides on each prefetch: candidates are never drawn from another tenant
                    qe.Prefetch(
                        limit=plan.depth,
                        query=qe.Query.Nearest(plan.dense, using=DENSE),
                        params=params,
                        filter=flt,
                    ),
                    qe.Prefetch(
                        limit=plan.depth,
                        query=qe.Query.Nearest(_sparse(plan.sparse), using=SPARSE),
                        filter=flt,
                    ),
                ],
                query=qe.Fusion.Rrf(k=plan.rrf_k),  # type: ignore[arg-type]  # the stub omits Fusion's variants
                filter=flt,
                with_payload=True,
            )
        elif plan.dense is not None:
            req = qe.QueryRequest(
                limit=plan.limit,
                query=qe.Query.Nearest(plan.dense, using=DENSE),
                filter=flt,
                params=params,
                score_threshold=plan.score_threshold,
                with_payload=True,
            )
        else:
            assert plan.sparse is not None
            req = qe.QueryRequest(
                limit=plan.limit,
                query=qe.Query.Nearest(_sparse(plan.sparse), using=SPARSE),
                filter=flt,
                with_payload=True,
            )
        rows = self._shard(collection).query(req)
        return [ScoredRow(str(p.id), float(p.score), _own(p.payload)) for p in rows]

    # -- snapshots ----------------------------------------------------------------------------------
    def snapshot(self, collection: str, dest: str) -> int:
        """Write a collection's shard snapshot (a tar of segments, WAL and config) to ``dest``; its size.

        The layout is a Qdrant shard snapshot's, which :meth:`qdrant_edge.EdgeShard.unpack_snapshot`
        (and a Qdrant server's shard-snapshot upload) reads. Written to a temporary
        file and renamed, so a crash never leaves half a snapshot under ``dest``.
        """
        with self._lock:
            shard = self._shard(collection)
            shard.flush()
            tmp = f"{dest}.partial"
            with tarfile.open(tmp, "w") as tar:
                for entry in sorted(os.listdir(self._path(collection))):
                    tar.add(os.path.join(self._path(collection), entry), arcname=entry)
            os.replace(tmp, dest)
        return os.path.getsize(dest)

    def restore(self, collection: str, src: str) -> int:
        """Replace (or create) ``collection`` from a shard snapshot file; returns its point count.

        The snapshot is unpacked and opened beside the live collection first, then
        swapped in, so a bad file leaves the collection as it was.
        """
        with self._lock:
            staging = tempfile.mkdtemp(prefix=f".{collection}-restore-", dir=self.dir)
            try:
                target = os.path.join(staging, "shard")
                qe.EdgeShard.unpack_snapshot(src, target)
                probe = qe.EdgeShard.load(target)
                points = int(probe.info().points_count)
                probe.close()
                old = self._shards.pop(collection, None)
                if old is not None:
                    old.close()
                live = self._path(collection)
                if os.path.exists(live):
                    os.replace(live, os.path.join(staging, "replaced"))
                os.replace(target, live)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return points
