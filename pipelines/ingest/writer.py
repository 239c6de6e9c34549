"""Writes chunk rows to the vector store from the driver, one whole document at a time."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from pipelines.ingest.stages import scanned
from services.retrieval.config import CollectionConfig
from services.retrieval.store import VectorStore
from services.retrieval.types import Chunk, SparseVector

_Part = tuple[Chunk, np.ndarray, SparseVector | None]


class StoreWriter:
    """Collects each document's chunk rows until all have arrived, then writes the document.

    Documents new to the store are buffered and upserted together (``flush_at``
    chunks per call); documents that had points go through ``replace_doc``
    (new chunks first, then the stale ones deleted). A document is never
    written in part, and a crash at any point leaves a state the next run
    repairs: fully written documents are skipped as unchanged, others replaced.
    """

    def __init__(
        self, store: VectorStore, coll: CollectionConfig, tenant: str, existing: set[str], flush_at: int
    ) -> None:
        self.store, self.coll, self.tenant = store, coll, tenant
        self.existing, self.flush_at = existing, flush_at
        self.pending: dict[str, list[_Part]] = {}
        self.buffer: list[_Part] = []
        self.buffered_docs = 0
        self._ready = False
        self.docs = self.chunks = self.stale = 0

    def add(self, row: dict[str, Any]) -> bool:
        """Add one ``chunk`` row; True when it completed its document (written or buffered)."""
        chunk = Chunk(
            id=str(row["chunk_id"]),
            doc_id=str(row["doc_id"]),
            chunk_index=int(row["chunk_index"]),
            text=str(row["text"]),
            tenant=self.tenant,
            content_hash=str(row["content_hash"]),
            source=str(row["source"]),
            metadata=json.loads(row["metadata"]),
            doc_chunks=int(row["doc_chunks"]),
        )
        chunk = scanned(chunk, row)
        sparse = SparseVector(*(tuple(x) for x in json.loads(row["sparse"]))) if row["sparse"] else None
        parts = self.pending.setdefault(chunk.doc_id, [])
        parts.append((chunk, np.frombuffer(row["dense"], dtype=np.float32), sparse))
        if len(parts) < chunk.doc_chunks:
            return False
        del self.pending[chunk.doc_id]
        if not self._ready:
            self.store.ensure_collection(self.coll, int(parts[0][1].shape[0]))
            self._ready = True
        if chunk.doc_id in self.existing:
            chunks, dense, sp = self._arrays(parts)
            written, stale = self.store.replace_doc(
                self.coll.name, self.tenant, chunk.doc_id, chunks, dense, sp
            )
            self.docs, self.chunks, self.stale = self.docs + 1, self.chunks + written, self.stale + stale
        else:
            self.buffer += parts
            self.buffered_docs += 1
            if len(self.buffer) >= self.flush_at:
                self.flush()
        return True

    def _arrays(self, parts: list[_Part]) -> tuple[list[Chunk], np.ndarray, list[SparseVector] | None]:
        parts = sorted(parts, key=lambda p: (p[0].doc_id, p[0].chunk_index))
        sparse = [p[2] for p in parts]
        vectors = [s for s in sparse if s is not None]
        hybrid = self.coll.hybrid and len(vectors) == len(parts)
        return [p[0] for p in parts], np.stack([p[1] for p in parts]), vectors if hybrid else None

    def flush(self) -> None:
        """Upsert the buffered new documents."""
        if self.buffer:
            chunks, dense, sparse = self._arrays(self.buffer)
            self.store.upsert(self.coll.name, chunks, dense, sparse)
            self.docs, self.chunks = self.docs + self.buffered_docs, self.chunks + len(chunks)
            self.buffer, self.buffered_docs = [], 0
