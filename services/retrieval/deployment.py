"""The retrieval deployment: search, list and write collections for the API and RAG.

Query and document embeddings go through the embedding deployment (shared
dynamic batching); the vector store is reached through :class:`VectorStore`
(embedded Qdrant or a server). Store calls are blocking, so they run in worker
threads. Every read and write is scoped to the caller's tenant.

When the store is unreachable, calls raise ``ServiceUnavailableError`` (503 with
``Retry-After``), and the deployment keeps running so plain chat is unaffected;
collections are (re)created on the first call that reaches the store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from monitoring.metrics import MetricSet
from monitoring.runtime import observability
from monitoring.tracing import start_span
from services.embeddings.config import EmbeddingModelConfig
from services.embeddings.encoder import Encoder
from services.errors import InvalidRequestError, NotFoundError
from services.retrieval.chunking import chunk_document, injection_scorer, scan_chunks
from services.retrieval.config import CollectionConfig, FilterStrategy, RetrievalConfig
from services.retrieval.filters import build_filter
from services.retrieval.sparse import BM25Encoder
from services.retrieval.store import open_store
from services.retrieval.types import Chunk, Document, SearchResult
from services.retrieval.validation import validate_documents

if TYPE_CHECKING:
    from services.guardrails.base import Scorer

logger = logging.getLogger("llmops.retrieval")


class RetrievalServer:
    """Tenant-scoped search and writes over the configured collections."""

    def __init__(
        self,
        retrieval: dict[str, Any],
        embeddings: list[dict[str, Any]],
        data_dir: str,
        embed_handles: dict[str, Any],
        metrics: MetricSet | None = None,
        scorer_factory: Callable[[float | None], Scorer] | None = None,
    ) -> None:
        """``scorer_factory(threshold)``: the prompt_injection scorer of ``scan_injection``
        collections (default: the shipped classifier; tests pass a fake)."""
        self.config = RetrievalConfig.model_validate(retrieval)
        self.metrics = metrics
        self._emb_cfgs = [EmbeddingModelConfig.model_validate(e) for e in embeddings]
        self._embed = embed_handles
        self.store = open_store(self.config.vector_store, data_dir)
        self.sparse = BM25Encoder()
        # tokenizer + dimension of each embedding model, for chunking (the model runs in its deployment)
        self._tokenizers: dict[str, Encoder] = {}
        self._ready: set[str] = set()
        self._lock = asyncio.Lock()
        # the embedded engine indexes only when asked: writes mark a collection dirty and one
        # background task per collection optimizes until it is clean (searches never wait for it)
        self._dirty: set[str] = set()
        self._optimizers: dict[str, asyncio.Task[None]] = {}
        self._scorer_factory = scorer_factory or injection_scorer
        self._scorers: dict[str, Scorer] = {}
        self._scorer_lock = threading.Lock()

    def injection_scorer(self, coll: CollectionConfig) -> Scorer:
        """The classifier of a ``scan_injection`` collection, loaded once (blocking: call in a thread)."""
        with self._scorer_lock:
            if coll.name not in self._scorers:
                self._scorers[coll.name] = self._scorer_factory(coll.injection_threshold)
            return self._scorers[coll.name]

    def warm_up(self) -> None:
        """Load the classifier of every scan_injection collection now: a missing artifact fails
        the replica at start, with the loader's message, rather than the first write."""
        for coll in self.config.collections:
            if coll.scan_injection:
                self.injection_scorer(coll).scores(["warm-up"])

    def _embedding_name(self, coll: CollectionConfig) -> str:
        return coll.embedding_model or self._emb_cfgs[0].name

    def _local_queries(self, coll: CollectionConfig) -> bool:
        """Queries are embedded here: configured so, and the model's deployment runs on CPU."""
        cfg = self._emb_cfg(coll)
        return self.config.local_query_embedding and cfg.device == "cpu"

    def _emb_cfg(self, coll: CollectionConfig) -> EmbeddingModelConfig:
        name = self._embedding_name(coll)
        return next(e for e in self._emb_cfgs if e.name == name)

    def _tokenizer(self, coll: CollectionConfig) -> Encoder:
        """The collection's embedding model: its tokenizer and dimension for chunking and, when
        queries are embedded here, the forward pass the embedding deployment runs (same backend
        and precision, so query vectors match the documents')."""
        name = self._embedding_name(coll)
        if name not in self._tokenizers:
            cfg = self._emb_cfg(coll)
            if self._local_queries(coll):
                self._tokenizers[name] = Encoder(
                    cfg.path, "cpu", cfg.backend, threads=1, cache_dir=cfg.cache_dir, precision=cfg.precision
                )
            else:
                self._tokenizers[name] = Encoder(cfg.path, "cpu")
        return self._tokenizers[name]

    async def _embed_query(self, coll: CollectionConfig, query: str) -> np.ndarray:
        if self._local_queries(coll):
            encoder = self._tokenizer(coll)  # loaded by _ensure
            return (await asyncio.to_thread(encoder.encode, [query], 1))[0]
        return (await self._embed_texts(coll, [query]))[0]

    def collection(self, name: str) -> CollectionConfig:
        coll = self.config.collection(name)
        if coll is None:
            raise NotFoundError(
                f"The collection '{name}' does not exist.",
                param="collection",
                value=name,
                code="collection_not_found",
            )
        return coll

    async def _ensure(self, coll: CollectionConfig) -> None:
        if coll.name in self._ready:
            return
        async with self._lock:
            if coll.name not in self._ready:
                dim = (await asyncio.to_thread(self._tokenizer, coll)).dimension
                await asyncio.to_thread(self.store.ensure_collection, coll, dim)
                self._ready.add(coll.name)
                self._after_write(coll.name)  # index whatever an interrupted load left plain

    def _after_write(self, name: str) -> None:
        if self.store.backend != "edge":
            return  # a server optimizes on its own
        self._dirty.add(name)
        task = self._optimizers.get(name)
        if task is None or task.done():
            self._optimizers[name] = asyncio.get_running_loop().create_task(self._optimize(name))

    async def _optimize(self, name: str) -> None:
        while name in self._dirty:
            self._dirty.discard(name)
            try:
                t0 = time.perf_counter()
                if await asyncio.to_thread(self.store.optimize, name):
                    logger.info("indexed collection %r in %.2f s", name, time.perf_counter() - t0)
            except Exception:  # never kills the replica: searches stay exact until the next try
                logger.exception("optimizing collection %r failed", name)

    async def _embed_texts(self, coll: CollectionConfig, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        result = await self._embed[self._embedding_name(coll)].embed.remote(texts)
        return np.asarray(result.vectors)

    # -- reads --------------------------------------------------------------------------
    async def search(
        self,
        collection: str,
        tenant: str,
        query: str,
        top_k: int = 5,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
        hybrid: bool | None = None,
        trace: dict[str, str] | None = None,
        filter_strategy: FilterStrategy | None = None,
        hnsw_ef: int | None = None,
        exclude_flagged: bool = False,
    ) -> SearchResult:
        """Tenant-scoped search; ``trace`` is the caller's trace-context carrier.

        ``exclude_flagged`` leaves out chunks the ingestion scan flagged as prompt injection
        (collections with ``scan_injection``; chunks never scanned are kept)."""
        coll = self.collection(collection)
        if not query.strip():
            raise InvalidRequestError("query must contain text", param="query")
        if not 1 <= top_k <= self.config.max_top_k:
            raise InvalidRequestError(
                f"top_k must be between 1 and {self.config.max_top_k} (got {top_k})",
                param="top_k",
                value=top_k,
            )
        use_hybrid = coll.hybrid if hybrid is None else hybrid
        if use_hybrid and not coll.hybrid:
            raise InvalidRequestError(
                f"collection '{collection}' stores no sparse vectors; hybrid search is off for it",
                param="hybrid",
                value=hybrid,
            )
        build_filter(filter, tenant, coll.text_fields())  # a bad filter is a 400 before any embedding
        await self._ensure(coll)
        span = start_span("retrieve", trace, {"llmops.collection": collection, "llmops.top_k": top_k})
        try:
            t0 = time.perf_counter()
            embed_span = start_span("embed", parent=span, attributes={"llmops.texts": 1})
            try:
                dense = await self._embed_query(coll, query)
            finally:
                embed_span.end()
            t1 = time.perf_counter()
            sparse = self.sparse.encode_query(query) if use_hybrid else None
            hits = await asyncio.to_thread(
                self.store.search,
                collection,
                tenant,
                dense,
                sparse,
                top_k,
                filter,
                score_threshold,
                exact,
                use_hybrid,
                hnsw_ef,
                filter_strategy,
                exclude_flagged=exclude_flagged,
            )
            t2 = time.perf_counter()
            span.set_attribute("llmops.results", len(hits))
        finally:
            span.end()
        if self.metrics is not None:
            self.metrics.observe_retrieval(collection, len(hits), hits[0].score if hits else None)
        return SearchResult(hits=hits, embed_s=t1 - t0, retrieve_s=t2 - t1)

    async def collections(self, tenant: str) -> list[dict[str, Any]]:
        out = []
        for coll in self.config.collections:
            await self._ensure(coll)
            points = await asyncio.to_thread(self.store.count, coll.name, tenant)
            out.append(
                {
                    "name": coll.name,
                    "object": "collection",
                    "points": points,
                    "distance": coll.distance,
                    "hybrid": coll.hybrid,
                    "embedding_model": self._embedding_name(coll),
                }
            )
        return out

    # -- writes -------------------------------------------------------------------------
    async def upsert_documents(
        self, collection: str, tenant: str, documents: list[Document]
    ) -> dict[str, Any]:
        """Validate, chunk, scan (``scan_injection``), embed and write documents (same ids and
        rules as batch ingestion). The changed documents' chunks are scanned in one batched
        classifier call before anything is written, so a failing classifier writes nothing."""
        coll = self.collection(collection)
        await self._ensure(coll)
        valid, quarantined = await asyncio.to_thread(validate_documents, documents, coll)
        if quarantined:
            first = quarantined[0]
            raise InvalidRequestError(
                f"document '{first.doc_id}' failed validation: {', '.join(first.failed)}",
                param="documents",
                value=first.doc_id,
            )
        tok = await asyncio.to_thread(self._tokenizer, coll)
        written = stale = unchanged = 0
        todo: list[tuple[Document, list[Chunk]]] = []
        for doc in valid:
            chunks: list[Chunk] = chunk_document(doc, tenant, tok, coll.chunk_tokens, coll.chunk_overlap)
            existing = await asyncio.to_thread(self.store.doc_point_ids, collection, tenant, doc.doc_id)
            if chunks and existing == {c.id for c in chunks}:
                unchanged += 1
                continue
            todo.append((doc, chunks))
        if coll.scan_injection and todo:
            todo = await asyncio.to_thread(self._scan, coll, todo)
        for doc, chunks in todo:
            dense = await self._embed_texts(coll, [c.text for c in chunks])
            sparse = self.sparse.encode_documents([c.text for c in chunks]) if coll.hybrid else None
            w, d = await asyncio.to_thread(
                self.store.replace_doc, collection, tenant, doc.doc_id, chunks, dense, sparse
            )
            written += w
            stale += d
        if written or stale:
            self._after_write(collection)
        return {
            "object": "collection.documents",
            "collection": collection,
            "documents": len(valid),
            "chunks_written": written,
            "stale_deleted": stale,
            "unchanged": unchanged,
        }

    def _scan(
        self, coll: CollectionConfig, todo: list[tuple[Document, list[Chunk]]]
    ) -> list[tuple[Document, list[Chunk]]]:
        flat = scan_chunks([c for _, chunks in todo for c in chunks], self.injection_scorer(coll))
        out, i = [], 0
        for doc, chunks in todo:
            out.append((doc, flat[i : i + len(chunks)]))
            i += len(chunks)
        flagged = sum(bool(c.injection_flagged) for c in flat)
        if flagged:
            logger.info("collection %r: %d of %d chunk(s) flagged as prompt injection", coll.name, flagged, i)
        return out

    async def delete_document(self, collection: str, tenant: str, doc_id: str) -> dict[str, Any]:
        coll = self.collection(collection)
        await self._ensure(coll)
        deleted = await asyncio.to_thread(self.store.delete_doc, collection, tenant, doc_id)
        if deleted:
            self._after_write(collection)
        if not deleted:
            raise NotFoundError(
                f"No document '{doc_id}' in collection '{collection}'.", param="doc_id", value=doc_id
            )
        return {
            "object": "collection.document.deleted",
            "collection": collection,
            "id": doc_id,
            "chunks_deleted": deleted,
        }


@serve.deployment(name="retrieval")
class RetrievalDeployment:
    """Serve wrapper of :class:`RetrievalServer`."""

    def __init__(
        self,
        retrieval: dict[str, Any],
        embeddings: list[dict[str, Any]],
        data_dir: str,
        embed_handles: dict[str, Any],
        monitoring: dict[str, Any] | None = None,
    ) -> None:
        obs = observability(monitoring)
        self.server = RetrievalServer(retrieval, embeddings, data_dir, embed_handles, obs.metrics)
        self.server.warm_up()
        logger.info("retrieval over %s", self.server.store.describe())

    async def search(self, collection: str, tenant: str, query: str, **kw: Any) -> SearchResult:
        return await self.server.search(collection, tenant, query, **kw)

    async def collections(self, tenant: str) -> list[dict[str, Any]]:
        return await self.server.collections(tenant)

    async def upsert_documents(
        self, collection: str, tenant: str, documents: list[Document]
    ) -> dict[str, Any]:
        return await self.server.upsert_documents(collection, tenant, documents)

    async def delete_document(self, collection: str, tenant: str, doc_id: str) -> dict[str, Any]:
        return await self.server.delete_document(collection, tenant, doc_id)

    async def describe(self) -> str:
        return self.server.store.describe()

    def __del__(self) -> None:
        self.server.store.close()
