"""Retrieval and collection routes of the gateway, over the retrieval deployment."""

from __future__ import annotations

from typing import Any

from services.errors import NotFoundError
from services.gateway.protocol import DocumentsRequest, RetrieveRequest
from services.retrieval.types import Document, Hit


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


class RetrievalServing:
    def __init__(self, handle: Any) -> None:
        self._h = handle

    def _handle(self) -> Any:
        if self._h is None:
            raise NotFoundError("Retrieval is not enabled on this server.", param=None)
        return self._h

    async def retrieve(self, req: RetrieveRequest, tenant: str) -> dict[str, Any]:
        hits = await self._handle().search.remote(
            req.collection,
            tenant,
            req.query,
            top_k=req.top_k,
            filter=req.filter,
            score_threshold=req.score_threshold,
            exact=req.exact,
            hybrid=req.hybrid,
        )
        return {"object": "list", "collection": req.collection, "data": [hit_json(h) for h in hits]}

    async def collections(self, tenant: str) -> dict[str, Any]:
        return {"object": "list", "data": await self._handle().collections.remote(tenant)}

    async def upsert(self, name: str, req: DocumentsRequest, tenant: str) -> dict[str, Any]:
        docs = [
            Document(doc_id=d.id, text=d.text, metadata=d.metadata, source=d.source) for d in req.documents
        ]
        result: dict[str, Any] = await self._handle().upsert_documents.remote(name, tenant, docs)
        return result

    async def delete(self, name: str, doc_id: str, tenant: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._handle().delete_document.remote(name, tenant, doc_id)
        return result
