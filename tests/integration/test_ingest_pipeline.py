"""The Ray Data ingestion pipeline against an embedded store in a temp data dir.

One small corpus (20 documents across every format) is ingested, re-ingested,
edited, deleted, crashed midway and resumed; a second corpus exercises the
quarantine. Ray is shared by the module: reused if this session already has it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmops.config import LLMOpsConfig, validate_config
from pipelines.ingest.pipeline import delete_document, run
from services.retrieval.store import VectorStore, open_store
from services.retrieval.store.edge import EdgeStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORDS = [
    *[
        "vector",
        "store",
        "ray",
        "data",
        "pipeline",
        "chunk",
        "embedding",
        "qdrant",
        "tenant",
        "latency",
        "token",
        "batch",
        "model",
    ],
    *[
        "serve",
        "gateway",
        "quota",
        "metric",
        "alert",
        "runbook",
        "replica",
        "shard",
        "index",
        "cosine",
        "sparse",
        "dense",
        "query",
    ],
]


def prose(seed: int, sentences: int) -> str:
    rng = random.Random(seed)
    return " ".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
        for _ in range(sentences)
    )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    started = not ray.is_initialized()
    if started:
        from services.local_ray import start_local_ray

        start_local_ray(num_cpus=4, serve_hardening=False, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def make_corpus(root: Path) -> list[str]:
    """20 documents: 5 txt, 4 md, 3 html, 4 jsonl rows, 2 csv rows, 2 parquet rows. Returns their ids."""
    ids: list[str] = []
    (root / "notes").mkdir(parents=True)
    for i in range(5):
        (root / f"t{i}.txt").write_text(prose(i, 3 + 6 * (i % 3)))
        ids.append(f"t{i}.txt")
    for i in range(4):
        rel = f"notes/m{i}.md" if i % 2 else f"m{i}.md"
        (root / rel).write_text(f"# Note {i}\n\n{prose(100 + i, 8)}\n\n{prose(200 + i, 4)}")
        ids.append(rel)
    for i in range(3):
        (root / f"p{i}.html").write_text(
            f"<html><head><title>Page {i}</title><script>x()</script></head>"
            f"<body><h1>Page {i}</h1><p>{prose(300 + i, 5)}</p></body></html>"
        )
        ids.append(f"p{i}.html")
    rows = [{"id": f"j{i}", "text": prose(400 + i, 4), "lang": "en"} for i in range(4)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids += [r["id"] for r in rows]
    (root / "table.csv").write_text(f'id,text,lang\nc0,"{prose(500, 3)}",en\nc1,"{prose(501, 6)}",fr\n')
    ids += ["c0", "c1"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"id": ["q0", "q1"], "text": [prose(600, 5), prose(601, 9)]}), root / "rows.parquet"
    )
    return [*ids, "q0", "q1"]


def config(data_dir: Path, **collection: Any) -> LLMOpsConfig:
    coll = {"name": "kb", "chunk_tokens": 48, "chunk_overlap": 8, **collection}
    return validate_config({"data_dir": str(data_dir), "retrieval": {"collections": [coll]}}, "test")


def points(cfg: LLMOpsConfig, doc_ids: list[str], every: bool = True) -> dict[str, set[str]]:
    """Point ids of each document; ``every``: these are all the collection holds.

    The store is opened only between runs: the embedded one admits one client.
    """
    with open_store(cfg.retrieval.vector_store, cfg.data_dir) as store:
        assert store.count("kb") == store.count("kb", "local")
        found = {d: store.doc_point_ids("kb", "local", d) for d in doc_ids}
        if every:
            assert sum(len(v) for v in found.values()) == store.count("kb"), "points of unknown documents"
        return found


@dataclass
class Reference:
    """A corpus ingested once, cleanly; its data dir is then the first test's to change."""

    root: Path
    ids: list[str]
    cfg: LLMOpsConfig
    points: dict[str, set[str]]  # what every complete run of the corpus must end with


@pytest.fixture(scope="module")
def reference(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("corpus")
    ids = make_corpus(root)
    cfg = config(tmp_path_factory.mktemp("ref"))
    summary = run(cfg, str(root), "kb", progress=False)
    found = points(cfg, ids)
    assert summary.docs_seen == summary.docs_written == 20
    assert summary.quarantined == summary.unchanged == summary.stale_deleted == 0
    assert all(found.values()), [d for d, p in found.items() if not p]
    assert summary.chunks_written == sum(len(p) for p in found.values())
    assert sum(len(p) > 1 for p in found.values()) >= 5, "the corpus should have multi-chunk documents"
    assert summary.store == f"embedded Qdrant Edge at {Path(cfg.data_dir).resolve() / 'qdrant' / 'edge'}"
    return Reference(root, ids, cfg, found)


class Crash(RuntimeError):
    pass


def test_rerun_update_crash_between_new_and_stale_then_delete(
    reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, root, ids = reference.cfg, reference.root, reference.ids
    again = run(cfg, str(root), "kb", progress=False)
    assert (again.docs_written, again.chunks_written, again.unchanged, again.quarantined) == (0, 0, 20, 0)
    assert points(cfg, ids) == reference.points

    # edit one document: keep its first sentences, change the rest; and die inside
    # replace_doc after the new chunks are written but before the stale ones go
    target = "t2.txt"
    old_text = (root / target).read_text()
    (root / target).write_text(old_text[: len(old_text) // 3] + " " + prose(999, 2))

    def no_delete(self: VectorStore, *args: Any, **kw: Any) -> None:
        raise Crash("killed before deleting stale chunks")

    monkeypatch.setattr(EdgeStore, "delete_points", no_delete)
    with pytest.raises(Crash):
        run(cfg, str(root), "kb", progress=False)
    monkeypatch.undo()
    both = points(cfg, ids)[target]

    resumed = run(cfg, str(root), "kb", progress=False)
    after = points(cfg, ids)
    old, new = reference.points[target], after[target]
    assert both == old | new, "old and new chunks both findable after the crash, never neither"
    assert old & new, "unchanged leading chunks keep their ids"
    assert (resumed.docs_written, resumed.unchanged, resumed.chunks_written) == (1, 19, len(new))
    assert resumed.stale_deleted == len(old - new) > 0
    assert {d: p for d, p in after.items() if d != target} == {
        d: p for d, p in reference.points.items() if d != target
    }
    with open_store(cfg.retrieval.vector_store, cfg.data_dir) as store:
        hits = store.search("kb", "local", None, _query(prose(999, 2)), 3, filter={"doc_id": target})
    assert hits and all(h.chunk.doc_id == target for h in hits)

    assert delete_document(cfg, "kb", target) == len(new)
    assert delete_document(cfg, "kb", target) == 0
    remaining = points(cfg, ids)
    assert remaining[target] == set()
    assert sum(len(p) for p in remaining.values()) == sum(len(p) for p in after.values()) - len(new)


def _query(text: str) -> Any:
    from services.retrieval.sparse import BM25Encoder

    return BM25Encoder().encode_query(text)


def test_crash_midway_then_resume_gives_exact_points(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "corpus"
    make_corpus(work)
    cfg = config(tmp_path / "data")
    calls = {"n": 0}
    real_upsert = EdgeStore.upsert

    def flaky_upsert(self: VectorStore, *args: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise Crash("killed after 2 write batches")
        real_upsert(self, *args, **kw)

    monkeypatch.setattr(EdgeStore, "upsert", flaky_upsert)
    with pytest.raises(Crash):
        run(cfg, str(work), "kb", progress=False, write_batch_chunks=8)
    monkeypatch.undo()
    partial = points(cfg, reference.ids)
    total = sum(len(p) for p in reference.points.values())
    assert 0 < sum(len(p) for p in partial.values()) < total
    assert all(p in (set(), reference.points[d]) for d, p in partial.items()), "a document half-written"

    resumed = run(cfg, str(work), "kb", progress=False)
    assert points(cfg, reference.ids) == reference.points  # exact: nothing missing, nothing twice
    assert resumed.unchanged == sum(1 for p in partial.values() if p)
    assert resumed.docs_written == 20 - resumed.unchanged


def test_quarantine_file_names_failed_expectations(ray_cluster: None, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rows = [
        {"id": "good1", "text": prose(1, 4), "lang": "en"},
        {"id": "good2", "text": prose(2, 4), "lang": "de"},
        {"id": "nolang", "text": prose(3, 4)},
        {"id": "empty", "text": "   ", "lang": "en"},
        {"id": "tiny", "text": "too short", "lang": "en"},
        {"id": "huge", "text": prose(4, 200), "lang": "en"},
        {"id": "twice", "text": prose(5, 2), "lang": "en"},
        {"id": "twice", "text": prose(6, 2), "lang": "en"},
        {"id": "notext", "body": "x", "lang": "en"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, '{"id": "broken", "text": ')
    (src / "docs.jsonl").write_text("\n".join(lines) + "\n")
    cfg = config(tmp_path / "data", required_metadata=["lang"], min_text_chars=20, max_text_chars=5000)
    summary = run(cfg, str(src), "kb", progress=False)

    assert (summary.docs_seen, summary.docs_written, summary.quarantined) == (10, 2, 8)
    assert summary.quarantine_file is not None
    qfile = Path(summary.quarantine_file)
    assert qfile.parent == tmp_path / "data" / "quarantine" and qfile.name.startswith("kb-")
    got = {(r["doc_id"], tuple(r["failed"])) for r in map(json.loads, qfile.read_text().splitlines())}
    assert got == {
        ("nolang", ("expect_column_values_to_not_be_null(metadata.lang)",)),
        ("empty", ("expect_column_values_to_not_be_null(text)",)),
        ("tiny", ("expect_column_value_lengths_to_be_between(text)",)),
        ("huge", ("expect_column_value_lengths_to_be_between(text)",)),
        ("twice", ("expect_column_values_to_be_unique(doc_id)",)),
        (None, ("json_parse_error",)),
        ("notext", ("text_field_missing",)),
    }  # "twice" twice: both copies
    found = points(cfg, ["good1", "good2", "nolang", "twice"])
    assert found["good1"] and found["good2"] and not found["nolang"] and not found["twice"]
