"""The server backend: a Qdrant server through ``qdrant-client`` (``vector_store.url``).

The same class over qdrant-client's local mode (``QdrantClient(location=":memory:")``
or ``path=``) is the brute-force *reference* of the congruence tests: exact
search in Python that ignores HNSW, quantization and payload indexes, so it
says what the right answer is. It is never the platform's embedded store.

Untested here (no Qdrant server binary on the machines that wrote this):
the 404/409/unreachable error mapping of REST and gRPC, and the
concurrent-create race in ``ensure_collection``; everything else runs in the
congruence suite through the reference.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.errors import LLMOpsError
from services.retrieval.config import CollectionConfig, QuantizationConfig, VectorStoreConfig
from services.retrieval.filters import Condition, FilterSpec
from services.retrieval.store.base import (
    BATCH,
    DENSE,
    SPARSE,
    Backend,
    BaseStore,
    CollectionMismatchError,
    IndexStatus,
    QueryPlan,
    ScoredRow,
    log,
    named_vectors,
    not_found,
    unreachable,
)
from services.retrieval.types import INJECTION_FLAGGED, Chunk, SparseVector

_DISTANCE = {d: models.Distance(d.capitalize()) for d in ("cosine", "dot", "euclid", "manhattan")}
_BINARY = {
    "one_bit": models.BinaryQuantizationEncoding.ONE_BIT,
    "one_and_half_bits": models.BinaryQuantizationEncoding.ONE_AND_HALF_BITS,
    "two_bits": models.BinaryQuantizationEncoding.TWO_BITS,
}


def _condition(c: Condition) -> models.FieldCondition:
    if c.kind == "match":
        return models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))
    if c.kind == "any":
        return models.FieldCondition(key=c.key, match=models.MatchAny(any=c.value))
    if c.kind == "range":
        return models.FieldCondition(key=c.key, range=models.Range(**c.value))
    if c.kind == "datetime_range":
        return models.FieldCondition(key=c.key, range=models.DatetimeRange(**c.value))
    return models.FieldCondition(key=c.key, match=models.MatchText(text=c.value))


def qdrant_filter(spec: FilterSpec) -> models.Filter:
    tenant = models.FieldCondition(key="tenant", match=models.MatchValue(value=spec.tenant))
    # must_not on the bool-indexed flag: a point without the field (never scanned) is kept
    flagged = [models.FieldCondition(key=INJECTION_FLAGGED, match=models.MatchValue(value=True))]
    return models.Filter(
        must=[tenant, *(_condition(c) for c in spec.conditions)],
        must_not=flagged if spec.exclude_flagged else None,
    )


def _quantization(q: QuantizationConfig | None) -> Any:
    # always_ram rather than the newer `memory` field: servers of every 1.x version take it
    if q is None:
        return None
    if q.kind == "scalar":
        cfg = models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, quantile=q.scalar_quantile, always_ram=q.always_ram
        )
        return models.ScalarQuantization(scalar=cfg)
    if q.kind == "product":
        pq = models.ProductQuantizationConfig(
            compression=models.CompressionRatio(q.product_compression), always_ram=q.always_ram
        )
        return models.ProductQuantization(product=pq)
    bq = models.BinaryQuantizationConfig(always_ram=q.always_ram, encoding=_BINARY[q.binary_encoding])
    return models.BinaryQuantization(binary=bq)


def _sparse(v: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=list(v.indices), values=list(v.values))


class ServerStore(BaseStore):
    """Collections on a Qdrant server (or, as the reference, qdrant-client's local mode)."""

    backend: Backend = "server"

    def __init__(self, config: VectorStoreConfig, client: QdrantClient | None = None) -> None:
        super().__init__(config)
        self._lock: threading.RLock | None = None
        if client is not None:  # the brute-force reference: local mode is not thread-safe
            self.backend = "reference"
            self._client = client
            self._lock = threading.RLock()
            return
        if not config.url:
            raise ValueError("ServerStore needs vector_store.url (or a client for the reference)")
        self._client = QdrantClient(
            url=config.url,
            api_key=config.api_key,
            prefer_grpc=config.prefer_grpc,
            timeout=max(1, math.ceil(config.timeout_s)),
        )

    def describe(self) -> str:
        """Where the vectors live, for logs and status lines (never the API key)."""
        if self.backend == "reference":
            return "qdrant-client local mode (brute-force reference)"
        parts = urlsplit(self.config.url or "")
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host  # drop any user:password@
        url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        return f"Qdrant server at {url}" + (" (gRPC)" if self.config.prefer_grpc else "")

    @contextmanager
    def _call(self, collection: str | None = None) -> Iterator[None]:
        """Map client errors to the platform's typed errors (and serialise the reference)."""
        guard: AbstractContextManager[Any] = self._lock if self._lock is not None else nullcontext()
        try:
            with guard:
                yield
        except (LLMOpsError, CollectionMismatchError):
            raise
        except UnexpectedResponse as e:
            if e.status_code == 404:
                raise not_found(collection) from e
            if e.status_code in (502, 503, 504):
                raise unreachable(e) from e
            raise
        except (ResponseHandlingException, httpx.TransportError, ConnectionError, TimeoutError) as e:
            raise unreachable(e) from e
        except ValueError as e:  # local mode reports a missing collection this way
            if collection and f"Collection {collection} not found" in str(e):
                raise not_found(collection) from e
            raise
        except grpc.RpcError as e:  # prefer_grpc: the status code says what went wrong
            status = e.code() if isinstance(e, grpc.Call) else None
            if status == grpc.StatusCode.NOT_FOUND:
                raise not_found(collection) from e
            if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise unreachable(e) from e
            raise

    def close(self) -> None:
        with self._call():
            self._client.close()

    # -- collections -----------------------------------------------------------------------------
    def collections(self) -> list[str]:
        with self._call():
            return sorted(c.name for c in self._client.get_collections().collections)

    def collection_exists(self, name: str) -> bool:
        with self._call(name):
            return bool(self._client.collection_exists(name))

    def _ensure(self, cfg: CollectionConfig, dimension: int) -> bool:
        created = False
        with self._call(cfg.name):
            if not self._client.collection_exists(cfg.name):
                created = self._create(cfg, dimension)
            self._check(cfg, dimension)
            if self.backend == "server":  # local mode has no payload indexes
                self._payload_indexes(cfg)
        return created

    def _create(self, cfg: CollectionConfig, dimension: int) -> bool:
        sparse = {SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)} if cfg.hybrid else None
        dense = models.VectorParams(
            size=dimension, distance=_DISTANCE[cfg.distance], on_disk=cfg.on_disk or None
        )
        try:
            self._client.create_collection(
                cfg.name,
                vectors_config={DENSE: dense},
                sparse_vectors_config=sparse,
                hnsw_config=models.HnswConfigDiff(
                    m=cfg.hnsw_m,
                    ef_construct=cfg.hnsw_ef_construct,
                    full_scan_threshold=cfg.full_scan_threshold_kb,
                ),
                optimizers_config=models.OptimizersConfigDiff(indexing_threshold=cfg.indexing_threshold_kb),
                quantization_config=_quantization(cfg.quantization),
                on_disk_payload=cfg.on_disk_payload,
            )
        except (UnexpectedResponse, grpc.RpcError, ValueError) as e:
            # another replica or job created it between our check and create: fine, check it
            if getattr(e, "status_code", None) == 409 or "already exists" in str(e):
                return False
            raise
        log.info("created collection %r (%d-d %s) in %s", cfg.name, dimension, cfg.distance, self.describe())
        return True

    def _check(self, cfg: CollectionConfig, dimension: int) -> None:
        params = self._client.get_collection(cfg.name).config.params
        vectors = params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if dense is None:
            raise CollectionMismatchError(
                f"collection {cfg.name!r} has no dense vector named {DENSE!r}; it was not created by "
                "llmops: use another collection name or delete it"
            )
        want_distance = _DISTANCE[cfg.distance]
        if dense.size != dimension or dense.distance != want_distance:
            raise CollectionMismatchError(
                f"collection {cfg.name!r} exists with {dense.size}-d {dense.distance.value} vectors, but the "
                f"config needs {dimension}-d {want_distance.value} (embedding model or distance changed?); "
                "use a new collection name, or delete and re-ingest this one"
            )
        if cfg.hybrid and SPARSE not in (params.sparse_vectors or {}):
            raise CollectionMismatchError(
                f"collection {cfg.name!r} has no sparse vector {SPARSE!r} but the config sets hybrid: true; "
                "set hybrid: false for it, or delete and re-ingest it"
            )

    def _payload_indexes(self, cfg: CollectionConfig) -> None:
        # Index creation is idempotent on the server, so this runs on every start and picks up
        # indexes added to the config later; `tenant` is flagged so Qdrant co-locates each tenant.
        tenant_index = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
        self._client.create_payload_index(cfg.name, "tenant", field_schema=tenant_index, wait=True)
        keyword = models.PayloadSchemaType.KEYWORD
        self._client.create_payload_index(cfg.name, "doc_id", field_schema=keyword, wait=True)
        # the exclude_flagged filter, indexed on every collection like tenant (Edge: its bool term)
        boolean = models.PayloadSchemaType.BOOL
        self._client.create_payload_index(cfg.name, INJECTION_FLAGGED, field_schema=boolean, wait=True)
        for field, kind in cfg.payload_indexes.items():
            schema: Any = models.PayloadSchemaType(kind)
            if kind == "text":
                schema = models.TextIndexParams(
                    type=models.TextIndexType.TEXT, tokenizer=models.TokenizerType.WORD, lowercase=True
                )
            self._client.create_payload_index(cfg.name, f"metadata.{field}", field_schema=schema, wait=True)

    def index_status(self, collection: str) -> IndexStatus:
        with self._call(collection):
            info = self._client.get_collection(collection)
        points = int(info.points_count or 0)
        return IndexStatus(points, int(info.indexed_vectors_count or 0), int(info.segments_count or 0))

    # -- writes and reads -------------------------------------------------------------------------
    def _write(
        self,
        collection: str,
        chunks: Sequence[Chunk],
        dense: np.ndarray,
        sparse: Sequence[SparseVector] | None,
    ) -> None:
        points = [
            models.PointStruct(id=c.id, vector=v, payload=c.payload())
            for c, v in zip(chunks, named_vectors(dense, sparse, _sparse), strict=True)
        ]
        with self._call(collection):
            self._client.upsert(collection, points=points, wait=True)

    def _scroll(self, collection: str, spec: FilterSpec, with_doc_id: bool) -> Iterator[tuple[str, str]]:
        offset: Any = None
        payload: Any = ["doc_id"] if with_doc_id else False
        flt = qdrant_filter(spec)
        with self._call(collection):
            while True:
                records, offset = self._client.scroll(
                    collection,
                    scroll_filter=flt,
                    limit=BATCH,
                    offset=offset,
                    with_payload=payload,
                    with_vectors=False,
                )
                for r in records:
                    yield str(r.id), str((r.payload or {}).get("doc_id", ""))
                if offset is None:
                    return

    def delete_points(self, collection: str, ids: Sequence[str] | set[str]) -> None:
        ordered = sorted(ids)
        for lo in range(0, len(ordered), BATCH):
            with self._call(collection):
                self._client.delete(
                    collection,
                    points_selector=models.PointIdsList(points=list(ordered[lo : lo + BATCH])),
                    wait=True,
                )

    def count(self, collection: str, tenant: str | None = None) -> int:
        flt = qdrant_filter(FilterSpec(tenant)) if tenant is not None else None
        with self._call(collection):
            return int(self._client.count(collection, count_filter=flt, exact=True).count)

    def _params(self, plan: QueryPlan) -> models.SearchParams | None:
        if self.backend == "reference":
            return None  # local mode takes no search params: it is always exact
        if plan.quantization is None:
            quant = models.QuantizationSearchParams(ignore=True)
        else:
            quant = models.QuantizationSearchParams(
                rescore=plan.quantization[0], oversampling=plan.quantization[1]
            )
        acorn = models.AcornSearchParams(enable=True) if plan.acorn else None
        return models.SearchParams(hnsw_ef=plan.ef, exact=plan.exact, quantization=quant, acorn=acorn)

    def _query(self, collection: str, plan: QueryPlan) -> list[ScoredRow]:
        flt = qdrant_filter(plan.spec)
        params = self._params(plan)
        kwargs: dict[str, Any]
        if plan.hybrid:
            assert plan.dense is not None and plan.sparse is not None
            kwargs = {
                "prefetch": [
                    # the filter also rides on each prefetch: candidates are never drawn from another tenant
                    models.Prefetch(
                        query=plan.dense, using=DENSE, filter=flt, limit=plan.depth, params=params
                    ),
                    models.Prefetch(query=_sparse(plan.sparse), using=SPARSE, filter=flt, limit=plan.depth),
                ],
                "query": models.RrfQuery(rrf=models.Rrf(k=plan.rrf_k)),
            }
        elif plan.dense is not None:
            kwargs = {
                "query": plan.dense,
                "using": DENSE,
                "search_params": params,
                "score_threshold": plan.score_threshold,
            }
        else:
            assert plan.sparse is not None
            kwargs = {"query": _sparse(plan.sparse), "using": SPARSE}
        with self._call(collection):
            res = self._client.query_points(
                collection,
                query_filter=flt,
                limit=plan.limit,
                with_payload=True,
                with_vectors=False,
                **kwargs,
            )
        return [ScoredRow(str(p.id), float(p.score), dict(p.payload or {})) for p in res.points]
