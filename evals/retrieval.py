"""Retrieval quality of the vector store on SQuAD 2.0: dense, BM25 and hybrid search.

:func:`evaluate_retrieval` builds a fresh embedded store (Qdrant Edge) in a
temporary folder, chunks, embeds and writes the paragraphs (tenant ``eval``),
builds the HNSW index, asks every question in each search mode and each search
kind — exact, HNSW, and HNSW over quantized vectors when the collection has
quantization — maps chunk hits back to paragraphs and scores the ranking against
the paragraph the question was written about. Approximate rows also report how
many of the exact search's top-10 chunks they found (their recall against exact).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from evals.datasets import SQUAD_SOURCE, RetrievalQuery, load_squad
from evals.metrics import dedupe, mean, mrr_at_k, ndcg_at_k, recall_at_k
from services.retrieval.chunking import chunk_document
from services.retrieval.config import CollectionConfig, VectorStoreConfig
from services.retrieval.sparse import BM25Encoder
from services.retrieval.store import VectorStore, open_store
from services.retrieval.types import Chunk, Document, SparseVector

if TYPE_CHECKING:
    from rich.table import Table

    from services.embeddings.encoder import Encoder

Mode = Literal["dense", "sparse", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "sparse", "hybrid")
SearchKind = Literal["exact", "hnsw", "quantized"]
TENANT = "eval"
K_VALUES = (1, 5, 10)
CUTOFF = 10  # MRR and nDCG cutoff; also how many distinct documents each ranking holds
BATCH = 64

Step = Callable[[int], None]


@dataclass(frozen=True)
class ModeResult:
    """Scores of one search mode, averaged over the questions."""

    mode: Mode
    search: SearchKind
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    mrr_at_10: float
    ndcg_at_10: float
    queries: int
    search_seconds: float
    # approximate rows: mean share of the exact search's top-10 chunks this search found
    recall_vs_exact: float | None = None

    @property
    def exact(self) -> bool:
        return self.search == "exact"

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.search_seconds if self.search_seconds > 0 else 0.0

    @property
    def label(self) -> str:
        return {"exact": "exact", "hnsw": "HNSW", "quantized": "HNSW + quantized"}[self.search]


@dataclass
class RetrievalReport:
    """What :func:`evaluate_retrieval` measured, with the setup needed to read it."""

    dataset: str
    embedding_model: str
    store: str
    collection: dict[str, Any]
    documents: int
    chunks: int
    questions: int
    chunk_top_k: int
    index_seconds: float
    query_embed_seconds: float
    total_seconds: float
    results: list[ModeResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def result(self, mode: Mode, search: SearchKind = "exact") -> ModeResult:
        """The row of one mode and search kind; raises ``KeyError`` if it was not run."""
        for r in self.results:
            if r.mode == mode and r.search == search:
                return r
        raise KeyError(f"no result for mode={mode!r} search={search!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for row, r in zip(out["results"], self.results, strict=True):
            row["queries_per_second"] = round(r.queries_per_second, 1)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _rows(self) -> list[list[str]]:
        return [
            [
                r.mode,
                r.label,
                f"{r.recall_at_1:.3f}",
                f"{r.recall_at_5:.3f}",
                f"{r.recall_at_10:.3f}",
                f"{r.mrr_at_10:.3f}",
                f"{r.ndcg_at_10:.3f}",
                "—" if r.recall_vs_exact is None else f"{r.recall_vs_exact:.3f}",
                f"{r.queries_per_second:,.0f}",
            ]
            for r in self.results
        ]

    _HEADER = ("mode", "search", "R@1", "R@5", "R@10", "MRR@10", "nDCG@10", "vs exact@10", "q/s")

    def _caption(self) -> str:
        return (
            f"{self.dataset}: {self.questions:,} questions over {self.documents:,} paragraphs "
            f"({self.chunks:,} chunks); {self.embedding_model}; {self.store}; "
            f"index {self.index_seconds:.1f} s, query embedding {self.query_embed_seconds:.1f} s, "
            f"total {self.total_seconds:.1f} s"
        )

    def to_table(self) -> Table:
        """A ``rich`` table of the results, the setup as its caption."""
        from rich.table import Table

        table = Table(title="Retrieval eval", caption=self._caption())
        for i, name in enumerate(self._HEADER):
            table.add_column(name, justify="left" if i < 2 else "right")
        for row in self._rows():
            table.add_row(*row)
        return table

    def to_markdown(self) -> str:
        """A README-ready Markdown table, the setup and notes below it."""
        head = "| " + " | ".join(self._HEADER) + " |"
        rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(self._HEADER))) + "|"
        body = ["| " + " | ".join(row) + " |" for row in self._rows()]
        notes = [f"- {n}" for n in self.notes]
        return "\n".join([head, rule, *body, "", self._caption() + ".", "", *notes])


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int], Step]]:
    """``task(description, total) -> advance(n)``; a rich progress bar on stderr when enabled."""
    if not enabled:
        yield lambda _desc, _total: lambda _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:

        def task(desc: str, total: int) -> Step:
            tid = bar.add_task(desc, total=total)
            return lambda n: bar.advance(tid, n)

        yield task


def _encode(encoder: Encoder, texts: Sequence[str], advance: Step) -> np.ndarray:
    parts = [np.zeros((0, encoder.dimension), dtype=np.float32)]
    for lo in range(0, len(texts), BATCH):
        batch = texts[lo : lo + BATCH]
        parts.append(encoder.encode(batch, batch_size=BATCH))
        advance(len(batch))
    return np.concatenate(parts)


def spread_sample(items: Sequence[RetrievalQuery], limit: int | None) -> list[RetrievalQuery]:
    """``limit`` items evenly spaced over ``items`` (every article represented), in order; all if None."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be >= 1; got {limit}")
    return [items[i * len(items) // limit] for i in range(limit)]


def evaluate_retrieval(
    encoder: Encoder,
    collection: CollectionConfig | None = None,
    *,
    corpus: Sequence[Document] | None = None,
    questions: Sequence[RetrievalQuery] | None = None,
    dataset: str = SQUAD_SOURCE,
    limit: int | None = None,
    work_dir: str | None = None,
    modes: Sequence[Mode] = MODES,
    searches: Sequence[SearchKind] | None = None,
    embedding_model: str | None = None,
    progress: bool = False,
) -> RetrievalReport:
    """Score dense, sparse (BM25) and hybrid (RRF) search on a fresh embedded store.

    Args:
        encoder: the embedding model (documents and questions).
        collection: chunking and distance settings to evaluate (default: the built-in
            collection defaults). ``hybrid`` is forced on so that every mode can run.
        corpus, questions: the documents and the questions with their gold ``doc_id``;
            default: the shipped SQuAD 2.0 dev half (answerable questions).
        dataset: a name for the report.
        limit: evaluate only this many questions, evenly spread over the set.
        work_dir: parent of the temporary store folder (default: the system temp dir);
            the folder is deleted afterwards.
        modes: which searches to run.
        searches: which search kinds to run; default: exact and HNSW, plus HNSW over
            quantized vectors when the collection configures quantization. Exact runs
            first whenever it runs, so the others report their recall against it.
        embedding_model: the model's name for the report (default: its directory name).
        progress: show rich progress bars on stderr.

    Raises:
        ValueError: a question's gold document is not in the corpus, or ``limit`` < 1.
    """
    t_start = time.perf_counter()
    if corpus is None or questions is None:
        squad = load_squad()
        corpus = squad.paragraphs if corpus is None else corpus
        questions = squad.questions if questions is None else questions
    qs = spread_sample(questions, limit)
    doc_ids = {d.doc_id for d in corpus}
    missing = sorted({d for q in qs for d in q.relevant_doc_ids if d not in doc_ids})[:5]
    if missing:
        raise ValueError(f"questions refer to documents not in the corpus, e.g. {missing}")
    base = collection or CollectionConfig(name="eval")
    # a 1 KB indexing threshold builds HNSW even for a small corpus, so its rows measure the graph
    cfg = base.model_copy(update={"name": "eval", "hybrid": True, "indexing_threshold_kb": 1})
    kinds = list(searches or ("exact", "hnsw", *(("quantized",) if base.quantization else ())))
    if "quantized" in kinds and base.quantization is None:
        raise ValueError("the quantized search needs a collection with quantization configured")
    kinds.sort(key=("exact", "hnsw", "quantized").index)
    notes = _notes(base)
    bm25 = BM25Encoder()

    with (
        _progress(progress) as task,
        tempfile.TemporaryDirectory(prefix="llmops-eval-", dir=work_dir) as tmp,
        open_store(VectorStoreConfig(), data_dir=tmp) as store,
    ):
        t0 = time.perf_counter()
        chunks: list[Chunk] = []
        for doc in corpus:
            chunks.extend(chunk_document(doc, TENANT, encoder, cfg.chunk_tokens, cfg.chunk_overlap))
        dense_docs = _encode(encoder, [c.text for c in chunks], task("embedding chunks", len(chunks)))
        store.ensure_collection(cfg, encoder.dimension)
        store.upsert(cfg.name, chunks, dense_docs, bm25.encode_documents([c.text for c in chunks]))
        store.optimize(cfg.name)
        index_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        dense_q = _encode(encoder, [q.text for q in qs], task("embedding questions", len(qs)))
        query_embed_s = time.perf_counter() - t0
        sparse_q = [bm25.encode_query(q.text) for q in qs]

        # Enough chunks that CUTOFF distinct documents survive de-duplication: at most
        # (chunks - documents) hits can repeat a document already ranked.
        per_doc = max((c.doc_chunks for c in chunks), default=1)
        top_k = max(CUTOFF, min(CUTOFF * per_doc, CUTOFF + len(chunks) - len(corpus)))
        results = []
        for mode in modes:
            exact_ids: list[list[str]] | None = None
            for kind in kinds:
                step = task(f"{mode} ({kind})", len(qs))
                res, ids = _run_mode(store, cfg.name, mode, kind, qs, dense_q, sparse_q, top_k, step)
                if kind == "exact":
                    exact_ids = ids
                elif exact_ids is not None:
                    res = replace(res, recall_vs_exact=_overlap(ids, exact_ids))
                results.append(res)
        store_desc = store.describe().split(" at ")[0]

    return RetrievalReport(
        dataset=dataset,
        embedding_model=embedding_model
        or str(getattr(encoder, "path", "encoder")).rstrip("/").rsplit("/", 1)[-1],
        store=store_desc,
        collection={
            "distance": cfg.distance,
            "chunk_tokens": cfg.chunk_tokens,
            "chunk_overlap": cfg.chunk_overlap,
            "hnsw_m": cfg.hnsw_m,
            "hnsw_ef_construct": cfg.hnsw_ef_construct,
            "search_ef": cfg.search_ef,
            "quantization": cfg.quantization.model_dump() if cfg.quantization else None,
        },
        documents=len(corpus),
        chunks=len(chunks),
        questions=len(qs),
        chunk_top_k=top_k,
        index_seconds=index_s,
        query_embed_seconds=query_embed_s,
        total_seconds=time.perf_counter() - t_start,
        results=results,
        notes=[*notes, f"Each search asks for {top_k} chunks, enough for {CUTOFF} distinct paragraphs."],
    )


def _run_mode(
    store: VectorStore,
    collection: str,
    mode: Mode,
    kind: SearchKind,
    qs: Sequence[RetrievalQuery],
    dense_q: np.ndarray,
    sparse_q: Sequence[SparseVector],
    top_k: int,
    advance: Step,
) -> tuple[ModeResult, list[list[str]]]:
    rankings: list[list[str]] = []
    chunk_ids: list[list[str]] = []
    t0 = time.perf_counter()
    for i in range(len(qs)):
        hits = store.search(
            collection,
            TENANT,
            dense=dense_q[i] if mode != "sparse" else None,
            sparse=sparse_q[i] if mode != "dense" else None,
            top_k=top_k,
            exact=kind == "exact",
            hybrid=mode == "hybrid",
            quantized=kind == "quantized",
        )
        rankings.append(dedupe(h.chunk.doc_id for h in hits)[:CUTOFF])
        chunk_ids.append([h.chunk.id for h in hits[:CUTOFF]])
        advance(1)
    elapsed = time.perf_counter() - t0
    gold = [frozenset(q.relevant_doc_ids) for q in qs]
    pairs = list(zip(rankings, gold, strict=True))
    r1, r5, r10 = (mean(recall_at_k(r, g, k) for r, g in pairs) for k in K_VALUES)
    result = ModeResult(
        mode=mode,
        search=kind,
        recall_at_1=r1,
        recall_at_5=r5,
        recall_at_10=r10,
        mrr_at_10=mean(mrr_at_k(r, g, CUTOFF) for r, g in pairs),
        ndcg_at_10=mean(ndcg_at_k(r, g, CUTOFF) for r, g in pairs),
        queries=len(qs),
        search_seconds=elapsed,
    )
    return result, chunk_ids


def _overlap(found: Sequence[Sequence[str]], exact: Sequence[Sequence[str]]) -> float:
    """Mean share of each exact top-10 that the other search also returned (its recall against exact)."""
    shares = [len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True) if e]
    return float(np.mean(shares)) if shares else float("nan")


def _notes(base: CollectionConfig) -> list[str]:
    notes = [
        "Relevance is binary: a question's one relevant document is the paragraph it was written "
        "about; another paragraph that also answers it counts as a miss, so scores are a lower bound.",
        "Chunk hits are mapped to their paragraph, keeping each paragraph's best rank.",
        "dense: cosine kNN on the embeddings; sparse: BM25 (IDF applied by Qdrant); hybrid: "
        "Reciprocal Rank Fusion of dense and sparse candidates.",
        "exact: brute force over every chunk; HNSW: the graph (hnsw_m, hnsw_ef_construct, search_ef), "
        "built even for this small corpus (indexing threshold 1 KB); HNSW + quantized: the graph over "
        "quantized vectors, rescored as configured. vs exact@10: the share of the exact search's "
        "top-10 chunks the approximate one found (sparse search is exact in every row).",
        "q/s: store searches only, one query at a time in one thread (question embedding is "
        "batched and timed separately).",
    ]
    if not base.hybrid:
        notes.append(
            f"Collection {base.name!r} sets hybrid: false; the eval turned it on to score every mode."
        )
    if base.distance != "cosine":
        notes[2] = notes[2].replace("cosine", base.distance)
    return notes
