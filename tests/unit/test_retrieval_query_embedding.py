"""Search queries are embedded in the retrieval replica (one Serve hop less) or by the deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.embeddings.encoder import Encoder
from services.retrieval.deployment import RetrievalServer
from services.retrieval.types import Document

pytestmark = pytest.mark.unit

DOCS = [
    Document(doc_id="normans", text="The Normans gave their name to Normandy, a region in France."),
    Document(doc_id="ray", text="Ray Serve batches concurrent requests to one replica."),
    Document(doc_id="qdrant", text="Qdrant builds an HNSW graph over the stored vectors."),
]


class _Call:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    async def remote(self, texts: list[str]) -> Any:
        return self.fn(texts)


class FakeEmbeddingHandle:
    """The embedding deployment's ``embed`` method, encoding with ``encoder``, counting calls."""

    def __init__(self, encoder: Encoder) -> None:
        self.calls: list[list[str]] = []

        def embed(texts: list[str]) -> Any:
            self.calls.append(list(texts))
            return type("R", (), {"vectors": encoder.encode(texts, batch_size=len(texts))})()

        self.embed = _Call(embed)


@pytest.fixture(scope="module")
def cache(openvino_cache: Path) -> Path:
    return openvino_cache


@pytest.fixture(scope="module")
def encoder(openvino_f32: Encoder) -> Encoder:
    """What the embedding deployment runs: the same backend and precision as the replica's."""
    return openvino_f32


def _server(
    tmp_path: Path, encoder: Encoder, cache: Path, local: bool, device: str = "cpu"
) -> tuple[RetrievalServer, Any]:
    handle = FakeEmbeddingHandle(encoder)
    emb = {"name": "all-minilm-l6-v2", "device": device, "precision": "f32", "cache_dir": str(cache)}
    if device != "cpu":
        emb["backend"] = "torch"
    server = RetrievalServer(
        {"collections": [{"name": "docs"}], "local_query_embedding": local},
        [emb],
        str(tmp_path),
        embed_handles={"all-minilm-l6-v2": handle},
    )
    return server, handle


async def test_local_query_embedding_skips_the_hop_and_finds_the_same(
    tmp_path: Path, encoder: Encoder, cache: Path
) -> None:
    local, local_handle = _server(tmp_path / "a", encoder, cache, local=True)
    remote, remote_handle = _server(tmp_path / "b", encoder, cache, local=False)
    for server in (local, remote):
        await server.upsert_documents("docs", "t", DOCS)
    writes = len(local_handle.calls)
    assert writes >= 1  # documents always go through the embedding deployment

    a = await local.search("docs", "t", "Who gave their name to Normandy?", top_k=3, hybrid=False)
    b = await remote.search("docs", "t", "Who gave their name to Normandy?", top_k=3, hybrid=False)
    assert len(local_handle.calls) == writes  # the query was embedded in the replica
    assert remote_handle.calls[-1] == ["Who gave their name to Normandy?"]
    assert [h.chunk.doc_id for h in a.hits] == [h.chunk.doc_id for h in b.hits]
    assert a.hits[0].chunk.doc_id == "normans"
    assert [h.score for h in a.hits] == pytest.approx([h.score for h in b.hits], abs=1e-4)
    local.store.close()
    remote.store.close()


async def test_a_gpu_model_is_always_called_in_its_deployment(
    tmp_path: Path, encoder: Encoder, cache: Path
) -> None:
    server, handle = _server(tmp_path, encoder, cache, local=True, device="cuda")
    await server.upsert_documents("docs", "t", DOCS[:1])
    n = len(handle.calls)
    await server.search("docs", "t", "Normandy", top_k=1, hybrid=False)
    assert len(handle.calls) == n + 1
    server.store.close()
