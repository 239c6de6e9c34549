"""Retrieval and collection routes of the gateway, over the retrieval deployment."""

from __future__ import annotations

import time
from typing import Any

from services.errors import NotFoundError
from services.gateway.observe import RequestObservation
from services.gateway.protocol import DocumentsRequest, RetrieveRequest
from services.gateway.retry import retry_once
from services.retrieval.types import Document, Hit, SearchResult


def hit_json(hit: Hit) -> dict[str, Any]:
    c = hit.chunk
    return {
        "id": c.id,
        "doc_id": c.doc_id,
        "chunk_index": c.chunk_index,
        "text": c.text,
        "metadata": c.metadata,
        "source": c.source,
        "score": hit.score,
    }


def _hits_json(collection: str, hits: list[Hit]) -> dict[str, Any]:
    return {"object": "list", "collection": collection, "data": [hit_json(h) for h in hits]}


class RetrievalServing:
    """The retrieval routes over the retrieval deployment's handle (None: retrieval is off)."""

    def __init__(self, handle: Any, retry_timeout_s: float = 60.0) -> None:
        self._h = handle
        self._retry_s = retry_timeout_s

    def readiness_probes(self) -> dict[str, Any]:
        return {} if self._h is None else {"retrieval": self._h.describe.remote}

    async def _call(self, method: str, *args: Any, obs: Any = None, **kwargs: Any) -> Any:
        """One call on the retrieval deployment, retried once if its replica died."""
        fn = getattr(self._handle(), method)
        return await retry_once(lambda: fn.remote(*args, **kwargs), "retrieval", obs, self._retry_s)

    def _handle(self) -> Any:
        if self._h is None:
            raise NotFoundError("Retrieval is not enabled on this server.", param=None)
        return self._h

    async def retrieve(
        self, req: RetrieveRequest, tenant: str, obs: RequestObservation | None = None
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        found: SearchResult = await self._call(
            "search",
            req.collection,
            tenant,
            req.query,
            top_k=req.top_k,
            filter=req.filter,
            score_threshold=req.score_threshold,
            exact=req.exact,
            hybrid=req.hybrid,
            filter_strategy=req.filter_strategy,
            hnsw_ef=req.hnsw_ef,
            exclude_flagged=req.exclude_flagged,
            trace=obs.trace_carrier() if obs is not None else None,
            obs=obs,
        )
        if obs is None:
            return _hits_json(req.collection, found.hits)
        # the round trip is retrieval, except the part the retrieval replica spent embedding
        obs.timer.record("embed", found.embed_s)
        obs.timer.record("retrieve", max(0.0, time.perf_counter() - t0 - found.embed_s))
        with obs.stage("serialize"):
            return _hits_json(req.collection, found.hits)

    async def collections(self, tenant: str) -> dict[str, Any]:
        return {"object": "list", "data": await self._call("collections", tenant)}

    async def upsert(self, name: str, req: DocumentsRequest, tenant: str) -> dict[str, Any]:
        docs = [
            Document(doc_id=d.id, text=d.text, metadata=d.metadata, source=d.source) for d in req.documents
        ]
        # idempotent (chunk ids are content-addressed), so a retry cannot duplicate anything
        result: dict[str, Any] = await self._call("upsert_documents", name, tenant, docs)
        return result

    async def delete(self, name: str, doc_id: str, tenant: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("delete_document", name, tenant, doc_id)
        return result
