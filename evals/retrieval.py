"""Retrieval quality of the vector store on SQuAD 2.0: dense, BM25 and hybrid search.

:func:`evaluate_retrieval` builds a fresh embedded store in a temporary folder,
chunks, embeds and writes the paragraphs (tenant ``eval``), asks every question
in each search mode, maps chunk hits back to paragraphs and scores the ranking
against the paragraph the question was written about.
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
from services.retrieval.store import VectorStore
from services.retrieval.types import Chunk, Document, SparseVector

if TYPE_CHECKING:
    from rich.table import Table

    from services.embeddings.encoder import Encoder

Mode = Literal["dense", "sparse", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "sparse", "hybrid")
TENANT = "eval"
K_VALUES = (1, 5, 10)
CUTOFF = 10  # MRR and nDCG cutoff; also how many distinct documents each ranking holds
BATCH = 64

Step = Callable[[int], None]


@dataclass(frozen=True)
class ModeResult:
    """Scores of one search mode, averaged over the questions."""

    mode: Mode
    exact: bool
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    mrr_at_10: float
    ndcg_at_10: float
    queries: int
    search_seconds: float
    # local mode: approximate search is the same brute force, so it was not run separately
    same_as_approximate: bool = False

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.search_seconds if self.search_seconds > 0 else 0.0

    @property
    def label(self) -> str:
        if self.same_as_approximate:
            return "exact = approx."
        return "exact" if self.exact else "approximate"


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

    def result(self, mode: Mode, exact: bool = True) -> ModeResult:
        """The row of one mode; raises ``KeyError`` if it was not run."""
        for r in self.results:
            if r.mode == mode and r.exact == exact:
                return r
        raise KeyError(f"no result for mode={mode!r} exact={exact}")

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
                f"{r.queries_per_second:,.0f}",
            ]
            for r in self.results
        ]

    _HEADER = ("mode", "search", "R@1", "R@5", "R@10", "MRR@10", "nDCG@10", "q/s")

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
    exact_modes: Sequence[bool] | None = None,
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
        exact_modes: exact and/or approximate (HNSW) search; default: both against a
            server, exact only in local mode, where approximate search is the same
            brute force (its rows would repeat the exact ones at twice the run time).
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
    cfg = base.model_copy(update={"name": "eval", "hybrid": True})
    notes = _notes(base)
    bm25 = BM25Encoder()

    with (
        _progress(progress) as task,
        tempfile.TemporaryDirectory(prefix="llmops-eval-", dir=work_dir) as tmp,
        VectorStore(VectorStoreConfig(), data_dir=tmp) as store,
    ):
        t0 = time.perf_counter()
        chunks: list[Chunk] = []
        for doc in corpus:
            chunks.extend(chunk_document(doc, TENANT, encoder, cfg.chunk_tokens, cfg.chunk_overlap))
        dense_docs = _encode(encoder, [c.text for c in chunks], task("embedding chunks", len(chunks)))
        store.ensure_collection(cfg, encoder.dimension)
        store.upsert(cfg.name, chunks, dense_docs, bm25.encode_documents([c.text for c in chunks]))
        index_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        dense_q = _encode(encoder, [q.text for q in qs], task("embedding questions", len(qs)))
        query_embed_s = time.perf_counter() - t0
        sparse_q = [bm25.encode_query(q.text) for q in qs]

        # Enough chunks that CUTOFF distinct documents survive de-duplication: at most
        # (chunks - documents) hits can repeat a document already ranked.
        per_doc = max((c.doc_chunks for c in chunks), default=1)
        top_k = max(CUTOFF, min(CUTOFF * per_doc, CUTOFF + len(chunks) - len(corpus)))
        same = exact_modes is None and store.mode == "local"
        exacts = (True,) if same else tuple(exact_modes or (True, False))
        results = []
        for mode in modes:
            for exact in exacts:
                step = task(f"{mode} ({'exact' if exact else 'approximate'})", len(qs))
                res = _run_mode(store, cfg.name, mode, exact, qs, dense_q, sparse_q, top_k, step)
                results.append(replace(res, same_as_approximate=same))
        store_desc = "embedded Qdrant (local mode)" if store.mode == "local" else "Qdrant server"

    return RetrievalReport(
        dataset=dataset,
        embedding_model=embedding_model
        or str(getattr(encoder, "path", "encoder")).rstrip("/").rsplit("/", 1)[-1],
        store=store_desc,
        collection={
            "distance": cfg.distance,
            "chunk_tokens": cfg.chunk_tokens,
            "chunk_overlap": cfg.chunk_overlap,
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
    exact: bool,
    qs: Sequence[RetrievalQuery],
    dense_q: np.ndarray,
    sparse_q: Sequence[SparseVector],
    top_k: int,
    advance: Step,
) -> ModeResult:
    rankings: list[list[str]] = []
    t0 = time.perf_counter()
    for i in range(len(qs)):
        hits = store.search(
            collection,
            TENANT,
            dense=dense_q[i] if mode != "sparse" else None,
            sparse=sparse_q[i] if mode != "dense" else None,
            top_k=top_k,
            exact=exact,
            hybrid=mode == "hybrid",
        )
        rankings.append(dedupe(h.chunk.doc_id for h in hits)[:CUTOFF])
        advance(1)
    elapsed = time.perf_counter() - t0
    gold = [frozenset(q.relevant_doc_ids) for q in qs]
    pairs = list(zip(rankings, gold, strict=True))
    r1, r5, r10 = (mean(recall_at_k(r, g, k) for r, g in pairs) for k in K_VALUES)
    return ModeResult(
        mode=mode,
        exact=exact,
        recall_at_1=r1,
        recall_at_5=r5,
        recall_at_10=r10,
        mrr_at_10=mean(mrr_at_k(r, g, CUTOFF) for r, g in pairs),
        ndcg_at_10=mean(ndcg_at_k(r, g, CUTOFF) for r, g in pairs),
        queries=len(qs),
        search_seconds=elapsed,
    )


def _notes(base: CollectionConfig) -> list[str]:
    notes = [
        "Relevance is binary: a question's one relevant document is the paragraph it was written "
        "about; another paragraph that also answers it counts as a miss, so scores are a lower bound.",
        "Chunk hits are mapped to their paragraph, keeping each paragraph's best rank.",
        "dense: cosine kNN on the embeddings; sparse: BM25 (IDF applied by Qdrant); hybrid: "
        "Reciprocal Rank Fusion of dense and sparse candidates.",
        "Embedded (local-mode) Qdrant always searches by exact brute force, so approximate search "
        'equals exact there ("exact = approx."; run once); against a Qdrant server, approximate '
        "search walks the HNSW graph (hnsw_m, hnsw_ef_construct, search_ef) and may score lower.",
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
