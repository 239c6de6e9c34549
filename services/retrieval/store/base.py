"""The vector-store interface and what every backend shares.

A backend implements a few primitives (create/check a collection, write points,
scroll, delete, count, run one planned query); :class:`BaseStore` builds the
platform's operations on them — batched idempotent upserts, replace-on-change
of a document, and search planning (filter strategy, hybrid fusion, HNSW /
quantization parameters). The congruence tests run the same public calls on
every backend and on qdrant-client's brute-force local mode.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from services.errors import NotFoundError, ServiceUnavailableError
from services.retrieval.config import CollectionConfig, FilterStrategy, VectorStoreConfig
from services.retrieval.filters import FilterSpec, build_filter, matches
from services.retrieval.types import INJECTION_FLAGGED, INJECTION_SCORE, Chunk, Hit, SparseVector

log = logging.getLogger("services.retrieval.store")

DENSE = "dense"
SPARSE = "bm25"
BATCH = 256
Backend = Literal["edge", "server", "reference"]


class StoreLockedError(RuntimeError):
    """The embedded store's folder is held by another process."""


class CollectionMismatchError(ValueError):
    """An existing collection's vectors differ from its config."""


class MigrationRequiredError(RuntimeError):
    """The store folder holds collections of the old embedded format that are not migrated yet."""


def unreachable(err: BaseException) -> ServiceUnavailableError:
    return ServiceUnavailableError(f"vector store unreachable: {type(err).__name__}: {err}")


def not_found(name: str | None) -> NotFoundError:
    msg = f"collection {name!r} does not exist"
    return NotFoundError(msg, param="collection", value=name, code="collection_not_found")


@dataclass(frozen=True)
class QueryPlan:
    """One engine query, planned from a search call; backends translate it one to one."""

    dense: list[float] | None
    sparse: SparseVector | None
    hybrid: bool  # both vectors, fused by RRF inside the engine
    spec: FilterSpec  # the filter the engine applies (always holds the tenant)
    limit: int
    depth: int  # candidates per prefetch of a hybrid query
    exact: bool
    ef: int | None
    acorn: bool  # ACORN filtered HNSW search (the `in` strategy)
    quantization: tuple[bool, float] | None  # (rescore, oversampling); None: original vectors only
    score_threshold: float | None
    rrf_k: int


@dataclass(frozen=True)
class ScoredRow:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class IndexStatus:
    """How much of a collection is indexed (HNSW) versus searched exactly."""

    points: int
    indexed_vectors: int
    segments: int


class BaseStore:
    """Chunks with dense and BM25 sparse vectors, per tenant (the platform's store operations).

    All methods are blocking and safe to call from several threads; async callers
    run them in a thread.

    Raises (any method): :class:`~services.errors.ServiceUnavailableError` when a
    server cannot be reached, :class:`~services.errors.NotFoundError`
    (``collection_not_found``) for a missing collection.
    """

    backend: Backend
    build_filter = staticmethod(build_filter)

    def __init__(self, config: VectorStoreConfig) -> None:
        self.config = config
        self._configs: dict[str, CollectionConfig] = {}
        self._configs_lock = threading.Lock()

    # -- what a backend implements -----------------------------------------------------------
    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def collections(self) -> list[str]:
        raise NotImplementedError

    def collection_exists(self, name: str) -> bool:
        raise NotImplementedError

    def _ensure(self, cfg: CollectionConfig, dimension: int) -> bool:
        raise NotImplementedError

    def _write(
        self,
        collection: str,
        chunks: Sequence[Chunk],
        dense: np.ndarray,
        sparse: Sequence[SparseVector] | None,
    ) -> None:
        raise NotImplementedError

    def _scroll(self, collection: str, spec: FilterSpec, with_doc_id: bool) -> Iterator[tuple[str, str]]:
        raise NotImplementedError

    def delete_points(self, collection: str, ids: Sequence[str] | set[str]) -> None:
        raise NotImplementedError

    def count(self, collection: str, tenant: str | None = None) -> int:
        """Exact number of points, of one tenant or all."""
        raise NotImplementedError

    def _query(self, collection: str, plan: QueryPlan) -> list[ScoredRow]:
        raise NotImplementedError

    def optimize(self, collection: str) -> bool:
        """Build the indexes of data written since the last call (True if anything was built).

        The embedded engine indexes only when asked (after a bulk load, or in the
        background after writes); a server optimizes on its own and returns False.
        """
        return False

    def index_status(self, collection: str) -> IndexStatus:
        raise NotImplementedError

    # -- identity ------------------------------------------------------------------------------
    @property
    def mode(self) -> Literal["local", "server"]:
        """``local`` for an in-process engine (one process at a time), ``server`` for a Qdrant server."""
        return "server" if self.backend == "server" else "local"

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- collections -----------------------------------------------------------------------------
    def ensure_collection(self, cfg: CollectionConfig, dimension: int) -> bool:
        """Create ``cfg.name`` if missing (True), else check its vectors match and apply its settings (False).

        Raises:
            CollectionMismatchError: the existing collection's dense size or distance
                differs, or it lacks the sparse vector a hybrid config needs.
        """
        if dimension <= 0:
            raise ValueError(f"dimension must be > 0; got {dimension}")
        created = self._ensure(cfg, dimension)
        with self._configs_lock:
            self._configs[cfg.name] = cfg
        return created

    def collection_config(self, name: str) -> CollectionConfig:
        """The config a collection was ensured with (defaults if it never was in this process)."""
        with self._configs_lock:
            return self._configs.get(name) or CollectionConfig(name=name)

    # -- writes ----------------------------------------------------------------------------------
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
            hi = min(lo + BATCH, len(chunks))
            self._write(collection, chunks[lo:hi], dense[lo:hi], None if sparse is None else sparse[lo:hi])

    def doc_point_ids(self, collection: str, tenant: str, doc_id: str) -> set[str]:
        """Ids of every point of one document of one tenant."""
        spec = build_filter({"doc_id": doc_id}, tenant)
        return {pid for pid, _ in self._scroll(collection, spec, with_doc_id=False)}

    def tenant_point_ids(self, collection: str, tenant: str) -> dict[str, set[str]]:
        """Point ids of every document of one tenant, by doc_id, in one scroll."""
        out: dict[str, set[str]] = {}
        for pid, doc_id in self._scroll(collection, FilterSpec(tenant), with_doc_id=True):
            out.setdefault(doc_id, set()).add(pid)
        return out

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

    # -- reads -----------------------------------------------------------------------------------
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
        strategy: FilterStrategy | None = None,
        quantized: bool = True,
        exclude_flagged: bool = False,
    ) -> list[Hit]:
        """The ``top_k`` chunks of ``tenant`` nearest the query, best first.

        * ``hybrid`` with both vectors: dense and sparse candidates (``max(4*top_k, 20)``
          each) fused by Reciprocal Rank Fusion inside the engine (one query: prefetch +
          fusion); scores are rank-based, so ``score_threshold`` is not applied.
        * dense given: dense search; ``score_threshold`` drops worse hits (for cosine and
          dot: below it; for euclid/manhattan distances: above it).
        * only sparse: BM25 keyword search, IDF computed by the engine (no threshold).

        ``strategy`` (default: the collection's ``filter_strategy``) decides how a
        filter is applied: ``pre`` exact search over the filtered set; ``in`` HNSW
        guided by the payload index (ACORN on); ``post`` HNSW over the tenant with
        ``post_filter_factor * top_k`` candidates, then the filter. ``exact`` searches
        exactly whatever the strategy; ``ef`` overrides the collection's ``search_ef``;
        ``quantized=False`` searches the original vectors even if quantized copies exist.
        ``exclude_flagged`` leaves out chunks the ingestion scan flagged as prompt injection,
        inside the engine's filter (indexed; chunks never scanned are kept).

        An empty sparse vector (a query of only stopwords) counts as none; with
        neither vector there is nothing to match and the result is ``[]``.

        Raises:
            InvalidRequestError: ``filter`` is malformed (``param="filter.<field>"``).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {top_k}")
        cfg = self.collection_config(collection)
        spec = build_filter(filter, tenant, exclude_flagged=exclude_flagged)
        if sparse is not None and not sparse.indices:
            sparse = None
        qdense = np.asarray(dense, dtype=np.float32).reshape(-1).tolist() if dense is not None else None
        if qdense is None and sparse is None:
            return []
        strategy = strategy or cfg.filter_strategy
        post = strategy == "post" and bool(spec.conditions)
        limit = top_k * cfg.post_filter_factor if post else top_k
        fused = hybrid and qdense is not None and sparse is not None
        q = cfg.quantization
        exact = exact or strategy == "pre"
        plan = QueryPlan(
            dense=qdense,
            sparse=sparse,
            hybrid=fused,
            spec=spec.tenant_only() if post else spec,
            limit=limit,
            depth=max(limit * 4, 20),
            exact=exact,
            ef=ef or cfg.search_ef,
            acorn=strategy == "in" and bool(spec.conditions),
            # exact means exact: the original vectors, never their quantized copies
            quantization=(q.rescore, q.oversampling) if q is not None and quantized and not exact else None,
            score_threshold=score_threshold if qdense is not None and not fused else None,
            rrf_k=cfg.rrf_k,
        )
        rows = self._query(collection, plan)
        if post:
            rows = [r for r in rows if matches(spec, r.payload)][:top_k]
        return [Hit(chunk=chunk_from_payload(r.id, r.payload), score=r.score) for r in rows]


def named_vectors(
    dense: np.ndarray, sparse: Sequence[SparseVector] | None, make_sparse: Callable[[SparseVector], Any]
) -> list[dict[str, Any]]:
    """Each point's named vectors: dense always, sparse (in the backend's type) when it has terms."""
    out: list[dict[str, Any]] = []
    for i in range(len(dense)):
        vector: dict[str, Any] = {DENSE: dense[i].tolist()}
        if sparse is not None and sparse[i].indices:  # a chunk with no terms has no sparse vector
            vector[SPARSE] = make_sparse(sparse[i])
        out.append(vector)
    return out


def chunk_from_payload(point_id: str, p: dict[str, Any]) -> Chunk:
    raw = p.get(INJECTION_SCORE)
    # a payload written before the scan existed has no score: not scanned, so never flagged
    score = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
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
        injection_score=score,
        injection_flagged=p.get(INJECTION_FLAGGED) is True if score is not None else None,
    )
