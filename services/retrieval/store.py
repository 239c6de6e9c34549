"""The vector store: one class over ``qdrant_client.QdrantClient`` for both modes.

* **local** (``vector_store.path``, default ``<data_dir>/qdrant``): qdrant-client's
  embedded mode. Search is exact brute force; HNSW settings, quantization,
  payload indexes and ``on_disk`` do not exist there and are skipped (logged once
  per process). The storage folder is locked: a second process opening it gets
  :class:`StoreLockedError`. Calls are serialised with a lock, because the
  embedded engine's in-memory structures are not thread-safe.
* **server** (``vector_store.url``): a Qdrant server over REST or gRPC.

Server-only behaviour, untested here (no Qdrant server binary on the machine that
wrote this): HNSW/quantization/``on_disk`` collection settings, payload index
creation (including ``tenant`` as an ``is_tenant`` keyword index), ``hnsw_ef`` and
``exact`` search params, the 404/409/unreachable error mapping of REST and gRPC,
and the concurrent-create race in :meth:`VectorStore.ensure_collection`.

Every search is filtered by tenant on the server side (``must: tenant == tenant``);
a request's own filter is ANDed to it and can never widen it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.errors import LLMOpsError, NotFoundError, ServiceUnavailableError
from services.retrieval.config import CollectionConfig, VectorStoreConfig
from services.retrieval.filters import build_filter, match_field
from services.retrieval.types import Chunk, Hit, SparseVector

__all__ = ["CollectionMismatchError", "StoreLockedError", "VectorStore", "build_filter"]

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "bm25"
BATCH = 256

_DISTANCE = {d: models.Distance(d.capitalize()) for d in ("cosine", "dot", "euclid", "manhattan")}
# CollectionConfig fields that only a server acts on (local mode is exact brute force)
_SERVER_ONLY = ("hnsw_m", "hnsw_ef_construct", "search_ef", "quantization", "on_disk", "payload_indexes")
_local_notice: set[int] = set()  # levels of the local-mode notice already logged in this process


class StoreLockedError(RuntimeError):
    """The embedded store's folder is held by another process."""


class CollectionMismatchError(ValueError):
    """An existing collection's vectors differ from its config."""


def _unreachable(err: BaseException) -> ServiceUnavailableError:
    return ServiceUnavailableError(f"vector store unreachable: {type(err).__name__}: {err}")


def _not_found(name: str | None) -> NotFoundError:
    msg = f"collection {name!r} does not exist"
    return NotFoundError(msg, param="collection", value=name, code="collection_not_found")


class VectorStore:
    """Chunks with dense and BM25 sparse vectors, per tenant, in Qdrant (see module docstring).

    All methods are blocking; async callers run them in a thread.

    Raises (any method): :class:`~services.errors.ServiceUnavailableError` when a
    server cannot be reached, :class:`~services.errors.NotFoundError`
    (``collection_not_found``) for a missing collection.
    """

    build_filter = staticmethod(build_filter)

    def __init__(self, config: VectorStoreConfig, data_dir: str) -> None:
        self.config = config
        self._lock: threading.RLock | None = None
        if config.url:
            self._path: str | None = None
            self._client = QdrantClient(
                url=config.url,
                api_key=config.api_key,
                prefer_grpc=config.prefer_grpc,
                timeout=max(1, math.ceil(config.timeout_s)),
            )
            return
        self._path = os.path.abspath(os.path.expanduser(config.path or os.path.join(data_dir, "qdrant")))
        self._lock = threading.RLock()
        try:
            self._client = QdrantClient(path=self._path)
        except RuntimeError as e:
            if "already accessed" not in str(e):
                raise
            raise StoreLockedError(
                f"the embedded vector store at {self._path} is held by another process "
                "(e.g. a running `llmops up`) or client; stop it, use its API, or point "
                "retrieval.vector_store.url at a Qdrant server for shared access"
            ) from e

    # -- identity ----------------------------------------------------------------------------
    @property
    def mode(self) -> Literal["local", "server"]:
        return "local" if self._path is not None else "server"

    def describe(self) -> str:
        """Where the vectors live, for logs and status lines (never the API key)."""
        if self._path is not None:
            return f"embedded Qdrant at {self._path}"
        parts = urlsplit(self.config.url or "")
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host  # drop any user:password@
        url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        return f"Qdrant server at {url}" + (" (gRPC)" if self.config.prefer_grpc else "")

    # -- plumbing ----------------------------------------------------------------------------
    @contextmanager
    def _call(self, collection: str | None = None) -> Iterator[None]:
        """Serialise local-mode calls and map client errors to the platform's typed errors."""
        guard: AbstractContextManager[Any] = self._lock if self._lock is not None else nullcontext()
        try:
            with guard:
                yield
        except (LLMOpsError, CollectionMismatchError):
            raise
        except UnexpectedResponse as e:
            if e.status_code == 404:
                raise _not_found(collection) from e
            if e.status_code in (502, 503, 504):
                raise _unreachable(e) from e
            raise
        except (ResponseHandlingException, httpx.TransportError, ConnectionError, TimeoutError) as e:
            raise _unreachable(e) from e
        except ValueError as e:  # local mode reports a missing collection this way
            if self._path is not None and collection and f"Collection {collection} not found" in str(e):
                raise _not_found(collection) from e
            raise
        except grpc.RpcError as e:  # prefer_grpc: the status code says what went wrong
            status = e.code() if isinstance(e, grpc.Call) else None
            if status == grpc.StatusCode.NOT_FOUND:
                raise _not_found(collection) from e
            if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _unreachable(e) from e
            raise

    def close(self) -> None:
        with self._call():
            self._client.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- collections ---------------------------------------------------------------------------
    def collections(self) -> list[str]:
        with self._call():
            return sorted(c.name for c in self._client.get_collections().collections)

    def collection_exists(self, name: str) -> bool:
        with self._call(name):
            return bool(self._client.collection_exists(name))

    def ensure_collection(self, cfg: CollectionConfig, dimension: int) -> bool:
        """Create ``cfg.name`` if missing (True), else check its vectors match (False).

        Raises:
            CollectionMismatchError: the existing collection's dense size or distance
                differs, or it lacks the sparse vector a hybrid config needs.
        """
        if dimension <= 0:
            raise ValueError(f"dimension must be > 0; got {dimension}")
        if self.mode == "local":
            self._note_local_ignored(cfg)
        created = False
        with self._call(cfg.name):
            if not self._client.collection_exists(cfg.name):
                created = self._create(cfg, dimension)
            self._check(cfg, dimension)
            if self.mode == "server":
                self._payload_indexes(cfg)
        return created

    def _create(self, cfg: CollectionConfig, dimension: int) -> bool:
        # always_ram/on_disk rather than the newer `memory` field: servers of every 1.x version take them
        q = cfg.quantization
        quant: models.ScalarQuantization | models.ProductQuantization | None = None
        if q is not None and q.kind == "scalar":
            int8 = models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=q.always_ram)
            quant = models.ScalarQuantization(scalar=int8)
        elif q is not None:
            ratio = models.CompressionRatio(q.product_compression)
            pq = models.ProductQuantizationConfig(compression=ratio, always_ram=q.always_ram)
            quant = models.ProductQuantization(product=pq)
        sparse = {SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)} if cfg.hybrid else None
        dense = models.VectorParams(
            size=dimension, distance=_DISTANCE[cfg.distance], on_disk=cfg.on_disk or None
        )
        try:
            self._client.create_collection(
                cfg.name,
                vectors_config={DENSE: dense},
                sparse_vectors_config=sparse,
                hnsw_config=models.HnswConfigDiff(m=cfg.hnsw_m, ef_construct=cfg.hnsw_ef_construct),
                quantization_config=quant,
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
        for field, kind in cfg.payload_indexes.items():  # the config's type names are Qdrant's
            schema = models.PayloadSchemaType(kind)
            self._client.create_payload_index(cfg.name, f"metadata.{field}", field_schema=schema, wait=True)

    @staticmethod
    def _note_local_ignored(cfg: CollectionConfig) -> None:
        defaults = CollectionConfig(name=cfg.name)
        explicit = [
            f"{n}={getattr(cfg, n)!r}" for n in _SERVER_ONLY if getattr(cfg, n) != getattr(defaults, n)
        ]
        level = logging.WARNING if explicit else logging.INFO
        if level in _local_notice:
            return
        _local_notice.add(level)
        detail = f" (collection {cfg.name!r} sets {', '.join(explicit)})" if explicit else ""
        log.log(
            level,
            "local mode is exact brute-force search; ignored: %s%s. They take effect with a Qdrant "
            "server (retrieval.vector_store.url).",
            ", ".join(_SERVER_ONLY),
            detail,
        )

    # -- writes ------------------------------------------------------------------------------------
    def upsert(
        self,
        collection: str,
        chunks: Sequence[Chunk],
        dense: np.ndarray,
        sparse: Sequence[SparseVector] | None,
    ) -> None:
        """Write chunks (point id = chunk id, so re-writing the same chunk is idempotent)."""
        dense = np.asarray(dense, dtype=np.float32)
        if dense.ndim != 2 or dense.shape[0] != len(chunks):
            raise ValueError(f"dense must have one row per chunk: {len(chunks)} chunks, shape {dense.shape}")
        if sparse is not None and len(sparse) != len(chunks):
            raise ValueError(f"sparse must have one vector per chunk: {len(chunks)} chunks, {len(sparse)}")
        for lo in range(0, len(chunks), BATCH):
            points = []
            for i in range(lo, min(lo + BATCH, len(chunks))):
                vector: dict[str, Any] = {DENSE: dense[i].tolist()}
                if sparse is not None and sparse[i].indices:  # a chunk with no terms has no sparse vector
                    vector[SPARSE] = _sparse(sparse[i])
                points.append(models.PointStruct(id=chunks[i].id, vector=vector, payload=chunks[i].payload()))
            with self._call(collection):
                self._client.upsert(collection, points=points, wait=True)

    def doc_point_ids(self, collection: str, tenant: str, doc_id: str) -> set[str]:
        """Ids of every point of one document of one tenant."""
        flt = models.Filter(must=[match_field("tenant", tenant), match_field("doc_id", doc_id)])
        return {pid for pid, _ in self._scroll(collection, flt, with_doc_id=False)}

    def tenant_point_ids(self, collection: str, tenant: str) -> dict[str, set[str]]:
        """Point ids of every document of one tenant, by doc_id, in one scroll.

        For re-runs over many documents: one pass instead of a filtered scan per
        document (which embedded mode answers by scanning the whole collection).
        """
        out: dict[str, set[str]] = {}
        for pid, doc_id in self._scroll(collection, models.Filter(must=[match_field("tenant", tenant)])):
            out.setdefault(doc_id, set()).add(pid)
        return out

    def _scroll(
        self, collection: str, flt: models.Filter, with_doc_id: bool = True
    ) -> Iterator[tuple[str, str]]:
        offset: Any = None
        payload: Any = ["doc_id"] if with_doc_id else False
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

    def delete_doc(self, collection: str, tenant: str, doc_id: str) -> int:
        """Delete one document's points; returns how many there were."""
        ids = self.doc_point_ids(collection, tenant, doc_id)
        self.delete_points(collection, ids)
        return len(ids)

    def replace_doc(
        self,
        collection: str,
        tenant: str,
        doc_id: str,
        chunks: Sequence[Chunk],
        dense: np.ndarray,
        sparse: Sequence[SparseVector] | None,
    ) -> tuple[int, int]:
        """Write a document's new chunks, then delete its stale ones: ``(written, deleted_stale)``.

        New before old, so a crash in between leaves the document findable (with a
        few stale chunks that the next run removes), never missing.
        """
        if any(c.tenant != tenant or c.doc_id != doc_id for c in chunks):
            raise ValueError(f"replace_doc({tenant!r}, {doc_id!r}) got chunks of another tenant/document")
        self.upsert(collection, chunks, dense, sparse)
        stale = self.doc_point_ids(collection, tenant, doc_id) - {c.id for c in chunks}
        self.delete_points(collection, stale)
        return len(chunks), len(stale)

    # -- reads ---------------------------------------------------------------------------------
    def count(self, collection: str, tenant: str | None = None) -> int:
        """Exact number of points, of one tenant or all."""
        flt = models.Filter(must=[match_field("tenant", tenant)]) if tenant is not None else None
        with self._call(collection):
            return int(self._client.count(collection, count_filter=flt, exact=True).count)

    def search(
        self,
        collection: str,
        tenant: str,
        dense: np.ndarray | None,
        sparse: SparseVector | None,
        top_k: int,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
        hybrid: bool = False,
        ef: int | None = None,
    ) -> list[Hit]:
        """The ``top_k`` chunks of ``tenant`` nearest the query, best first.

        * ``hybrid`` with both vectors: dense and sparse candidates (``max(4*top_k, 20)``
          each) fused by Reciprocal Rank Fusion; scores are rank-based (``sum 1/(k + rank)``),
          not similarities, so ``score_threshold`` is not applied.
        * dense given: dense search; ``score_threshold`` drops worse hits (for cosine and
          dot: below it; for euclid/manhattan distances: above it).
        * only sparse: BM25 keyword search (scores are unbounded; no threshold).

        An empty sparse vector (a query of only stopwords) counts as none; with
        neither vector there is nothing to match and the result is ``[]``.

        Raises:
            InvalidRequestError: ``filter`` is malformed (``param="filter.<field>"``).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {top_k}")
        flt = build_filter(filter, tenant)
        if sparse is not None and not sparse.indices:
            sparse = None
        params = models.SearchParams(exact=exact, hnsw_ef=ef) if self.mode == "server" else None
        qsparse = _sparse(sparse) if sparse is not None else None
        qdense = np.asarray(dense, dtype=np.float32).reshape(-1).tolist() if dense is not None else None
        kwargs: dict[str, Any]
        if hybrid and qdense is not None and qsparse is not None:
            depth = max(top_k * 4, 20)
            kwargs = {
                "prefetch": [
                    # the tenant filter also rides on each prefetch (the server propagates the outer
                    # one too): candidates are never drawn from another tenant
                    models.Prefetch(query=qdense, using=DENSE, filter=flt, limit=depth, params=params),
                    models.Prefetch(query=qsparse, using=SPARSE, filter=flt, limit=depth),
                ],
                "query": models.FusionQuery(fusion=models.Fusion.RRF),
            }
        elif qdense is not None:
            kwargs = {"query": qdense, "using": DENSE, "search_params": params}
            kwargs["score_threshold"] = score_threshold
        elif qsparse is not None:
            kwargs = {"query": qsparse, "using": SPARSE}
        else:
            return []
        with self._call(collection):
            res = self._client.query_points(
                collection, query_filter=flt, limit=top_k, with_payload=True, with_vectors=False, **kwargs
            )
        return [Hit(chunk=_chunk(str(p.id), p.payload or {}), score=float(p.score)) for p in res.points]


def _sparse(v: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=list(v.indices), values=list(v.values))


def _chunk(point_id: str, p: dict[str, Any]) -> Chunk:
    return Chunk(
        id=point_id,
        doc_id=str(p.get("doc_id", "")),
        chunk_index=int(p.get("chunk_index", 0)),
        text=str(p.get("text", "")),
        tenant=str(p.get("tenant", "")),
        content_hash=str(p.get("content_hash", "")),
        source=str(p.get("source", "")),
        metadata=dict(p.get("metadata") or {}),
        doc_chunks=int(p.get("doc_chunks", 1)),
    )
