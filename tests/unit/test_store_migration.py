"""Upgrade path and snapshots of the embedded store, through the real CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from services.retrieval.config import CollectionConfig, VectorStoreConfig
from services.retrieval.sparse import BM25Encoder
from services.retrieval.store import MigrationRequiredError, open_store
from services.retrieval.store.server import ServerStore
from services.retrieval.types import Chunk, chunk_id, content_hash

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BM25 = BM25Encoder()


def _chunks(n: int) -> tuple[list[Chunk], np.ndarray]:
    rng = np.random.default_rng(3)
    texts = [f"note {i} about topic {i % 7} draft" for i in range(n)]
    chunks = [
        Chunk(
            chunk_id("t", f"d{i}", 0, content_hash(t)),
            f"d{i}",
            0,
            t,
            "t",
            content_hash(t),
            "",
            {"draft": i % 2 == 0},
        )
        for i, t in enumerate(texts)
    ]
    return chunks, rng.normal(size=(n, 8)).astype(np.float32)


def _cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMOPS_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llmops.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _legacy_store(data_dir: Path, n: int) -> tuple[list[Chunk], np.ndarray]:
    """A store written by the old embedded mode (qdrant-client local mode at <data_dir>/qdrant)."""
    chunks, vecs = _chunks(n)
    old = ServerStore(VectorStoreConfig(), client=QdrantClient(path=str(data_dir / "qdrant")))
    old.ensure_collection(CollectionConfig(name="docs"), 8)
    old.upsert("docs", chunks, vecs, BM25.encode_documents([c.text for c in chunks]))
    old.close()
    return chunks, vecs


def test_old_format_is_detected_and_migrated_without_reembedding(tmp_path: Path) -> None:
    _, vecs = _legacy_store(tmp_path, 300)
    with pytest.raises(MigrationRequiredError, match=r"docs.*llmops ingest --migrate"):
        open_store(VectorStoreConfig(), str(tmp_path))

    res = _cli("ingest", "--migrate", data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "migrated docs: 300 points" in res.stdout and "nothing re-embedded" in res.stdout
    again = _cli("ingest", "--migrate", data_dir=tmp_path)  # idempotent
    assert again.returncode == 0 and "nothing to migrate" in again.stdout

    ref = ServerStore(VectorStoreConfig(), client=QdrantClient(path=str(tmp_path / "qdrant")))
    with open_store(VectorStoreConfig(), str(tmp_path)) as edge:
        ref.ensure_collection(CollectionConfig(name="docs"), 8)
        edge.ensure_collection(CollectionConfig(name="docs"), 8)
        assert edge.count("docs") == ref.count("docs") == 300
        for q in vecs[:5]:  # the copied vectors are the stored ones: same neighbours, same scores
            e = edge.search("docs", "t", q, None, 5, exact=True)
            r = ref.search("docs", "t", q, None, 5, exact=True)
            assert [h.chunk for h in e] == [h.chunk for h in r]
            assert [h.score for h in e] == pytest.approx([h.score for h in r], rel=1e-5)
        sq = BM25.encode_query("topic 3")
        assert {h.chunk.id for h in edge.search("docs", "t", None, sq, 400)} == {
            h.chunk.id for h in ref.search("docs", "t", None, sq, 400)
        }
        assert len(edge.search("docs", "t", vecs[0], None, 300, filter={"draft": True}, exact=True)) == 150
    ref.close()


def test_snapshot_and_restore_round_trip(tmp_path: Path) -> None:
    chunks, vecs = _chunks(200)
    with open_store(VectorStoreConfig(), str(tmp_path)) as edge:
        edge.ensure_collection(CollectionConfig(name="docs"), 8)
        edge.upsert("docs", chunks, vecs, BM25.encode_documents([c.text for c in chunks]))
        before = edge.search("docs", "t", vecs[1], None, 10, exact=True)

    snap = tmp_path / "out" / "docs.snapshot"
    res = _cli("collections", "snapshot", "docs", "--out", str(snap), data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert snap.is_file() and "200 points" in res.stdout
    assert not Path(f"{snap}.partial").exists()

    with open_store(VectorStoreConfig(), str(tmp_path)) as edge:  # lose half, then restore
        edge.delete_points("docs", [c.id for c in chunks[:100]])
        assert edge.count("docs") == 100
    res = _cli("collections", "restore", "docs", str(snap), data_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "200 points" in res.stdout
    with open_store(VectorStoreConfig(), str(tmp_path)) as edge:
        edge.ensure_collection(CollectionConfig(name="docs"), 8)
        assert edge.count("docs") == 200
        after = edge.search("docs", "t", vecs[1], None, 10, exact=True)
        assert [(h.chunk, h.score) for h in after] == [(h.chunk, h.score) for h in before]

    bad = tmp_path / "bad.snapshot"
    bad.write_bytes(b"not a tar")
    res = _cli("collections", "restore", "docs", str(bad), data_dir=tmp_path)
    assert res.returncode == 1 and "not a restorable shard snapshot" in res.stderr
    with open_store(VectorStoreConfig(), str(tmp_path)) as edge:
        assert edge.count("docs") == 200  # a bad file leaves the collection as it was
    missing = _cli("collections", "snapshot", "ghost", data_dir=tmp_path)
    assert missing.returncode == 1 and "no collection 'ghost'" in missing.stderr
