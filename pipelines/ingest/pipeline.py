"""Batch ingestion: files → validated documents → chunks → embeddings → the vector store.

The Ray Data graph (streaming; one row per document until chunking, then one
per chunk; the stages live in :mod:`pipelines.ingest.stages`)::

    from_items(documents)                        driver: files read, duplicate ids quarantined
      .map_batches(validate_batch, TaskPool)     GX suite (context built once per worker process)
      .map_batches(Chunker, ActorPool(1))        token-aware chunks with deterministic ids; a document
                                                 whose chunk ids all exist already → one "unchanged" row
      .map_batches(Embedder, ActorPool(1..n))    dense (sentence-transformers) + BM25 sparse vectors
      .map_batches(InjectionScanner, ActorPool)  scan_injection only: prompt_injection score + flag
      .iter_batches()                            driver: StoreWriter → the vector store

Every row carries a ``kind`` (``chunk``, ``unchanged``, ``quarantined``), so one
stream brings everything back to the driver. Writes happen in the driver only,
because the embedded store admits one process. New documents are upserted in
batches; documents that already had points go through ``replace_doc`` (new
chunks first, then the stale ones deleted). With deterministic chunk ids a
re-run is idempotent and a killed run resumable: running again ends with
exactly the right points.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pipelines.ingest.sources import ReadResult, RowFields, read_documents
from pipelines.ingest.stages import (
    Chunker,
    Embedder,
    InjectionScanner,
    ids_digest,
    quarantined_row,
    validate_batch,
)
from pipelines.ingest.validate import QuarantineWriter, dedupe_ids, quarantine_path
from pipelines.ingest.writer import StoreWriter
from pipelines.ray_env import ensure_ray, quiet_ray_data
from services.embeddings.config import EmbeddingModelConfig
from services.retrieval.config import CollectionConfig
from services.retrieval.store import VectorStore
from services.retrieval.store import open_store as _open_store

if TYPE_CHECKING:
    from rich.console import Console

    from llmops.config import LLMOpsConfig  # type only: areas do not import llmops at run time

# documents per Ray block, validation and chunking batch: each block costs a few ms of Ray task
# and batch overhead, which short documents do not amortise at 32 (benchmarks/ingest.py on 6,724
# SQuAD paragraphs and questions: 192 docs/s at 32, 240 at 128, 250 at 256)
DOCS_PER_BLOCK = 128
MAX_BLOCKS = 4096


@dataclass
class IngestSummary:
    """What one run did."""

    collection: str
    tenant: str
    store: str
    docs_seen: int = 0
    docs_written: int = 0
    unchanged: int = 0
    chunks_written: int = 0
    stale_deleted: int = 0
    quarantined: int = 0
    quarantine_file: str | None = None
    elapsed_s: float = 0.0
    index_s: float = 0.0  # building the HNSW/payload indexes at the end (inside elapsed_s)

    @property
    def docs_per_s(self) -> float:
        return self.docs_seen / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs_per_s": round(self.docs_per_s, 2)}

    def lines(self) -> list[tuple[str, str]]:
        return [
            ("wrote to", self.store),
            ("collection / tenant", f"{self.collection} / {self.tenant}"),
            ("documents seen", str(self.docs_seen)),
            ("documents written", str(self.docs_written)),
            ("unchanged (skipped)", str(self.unchanged)),
            ("chunks written", str(self.chunks_written)),
            ("stale chunks deleted", str(self.stale_deleted)),
            ("quarantined", str(self.quarantined)),
            *([("quarantine file", self.quarantine_file)] if self.quarantine_file else []),
            ("elapsed", f"{self.elapsed_s:.1f} s ({self.docs_per_s:.1f} docs/s)"),
            *([("index build", f"{self.index_s:.1f} s (HNSW + payload indexes)")] if self.index_s else []),
        ]


# -- resolving config -----------------------------------------------------------------------
def collection_config(config: LLMOpsConfig, name: str | None) -> CollectionConfig:
    """The named collection, or the only one; ``ValueError`` naming the choices otherwise."""
    names = [c.name for c in config.retrieval.collections]
    if name is None:
        if len(names) == 1:
            return config.retrieval.collections[0]
        raise ValueError(f"name a collection (--collection); configured: {', '.join(names) or 'none'}")
    coll = config.retrieval.collection(name)
    if coll is None:
        raise ValueError(f'Got "{name}" for collection; configured collections: {", ".join(names) or "none"}')
    return coll


def embedding_config(config: LLMOpsConfig, coll: CollectionConfig) -> EmbeddingModelConfig:
    name = coll.embedding_model or config.embeddings[0].name
    return next(e for e in config.embeddings if e.name == name)


def open_store(config: LLMOpsConfig, allow_legacy: bool = False) -> VectorStore:
    """The configured store.

    Raises:
        StoreLockedError: another process holds the embedded one.
        MigrationRequiredError: the embedded folder holds old-format collections (``--migrate``).
    """
    return _open_store(config.retrieval.vector_store, config.data_dir, allow_legacy=allow_legacy)


def existing_digests(
    store: VectorStore, coll: CollectionConfig, tenant: str, docs: list[Any]
) -> dict[str, str]:
    """:func:`ids_digest` of the stored point ids of each document that has any."""
    if not store.collection_exists(coll.name):
        return {}
    wanted = {d.doc_id for d in docs}
    stored = store.tenant_point_ids(coll.name, tenant)  # one scroll, not one scan per document
    return {doc_id: ids_digest(ids) for doc_id, ids in stored.items() if doc_id in wanted}


def build_dataset(
    config: LLMOpsConfig,
    coll: CollectionConfig,
    tenant: str,
    docs: list[Any],
    existing: dict[str, str],
    embed_actors: int | None = None,
    embed_batch_size: int = 64,
) -> Any:
    """The Ray Data graph of the module docstring, not yet executed."""
    import ray

    emb = embedding_config(config, coll)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    cuda = emb.device.startswith("cuda")
    records = [
        {"doc_id": d.doc_id, "text": d.text, "metadata": json.dumps(d.metadata), "source": d.source}
        for d in docs
    ]
    # Small blocks keep the stream moving: a block is never split between tasks, so one
    # block of the whole corpus would go through every stage at once (no overlap, and a
    # progress bar that jumps from 0 to done).
    blocks = max(1, min(math.ceil(len(records) / DOCS_PER_BLOCK), MAX_BLOCKS))
    actors = embed_actors or max(1, min(4, cpus // 2))
    # Each embedding actor reserves one CPU so the other stages always fit beside it, but
    # encodes with its share of the machine's threads (Ray would pin it to one): chunking
    # and validation are light next to the model.
    threads = emb.torch_threads or max(1, cpus // actors)
    # Actors run with max_restarts=0: a dead actor fails the run, and re-running resumes it.
    # Ray's default (restart forever) also makes its core worker log an error line per actor
    # ("constructor arguments in the object store and max_restarts > 0"). Ray 2.60 takes
    # max_restarts only through the deprecated **ray_remote_args, hence the filter.
    restarts: dict[str, Any] = {"max_restarts": 0}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        ds = (
            ray.data.from_items(records, override_num_blocks=blocks)
            .map_batches(
                functools.partial(validate_batch, collection_json=coll.model_dump_json()),
                batch_size=DOCS_PER_BLOCK,
                batch_format="numpy",
                # one task at a time: a batch validates in milliseconds, but each new worker
                # process pays seconds for the GX import and context (once, then cached)
                compute=ray.data.TaskPoolStrategy(size=1),
                num_cpus=0.25,
            )
            .map_batches(
                Chunker,
                fn_constructor_args=(emb.path, tenant, coll.chunk_tokens, coll.chunk_overlap, existing),
                batch_size=DOCS_PER_BLOCK,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=0.5,
                **restarts,
            )
            .map_batches(
                Embedder,
                fn_constructor_args=(
                    emb.path,
                    "cuda" if cuda else emb.device,
                    coll.hybrid,
                    embed_batch_size,
                    threads,
                    emb.backend,
                    emb.precision,
                    emb.cache_dir,
                ),
                batch_size=embed_batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                num_cpus=1,
                num_gpus=1 if cuda else 0,
                **restarts,
            )
        )
        if not coll.scan_injection:
            return ds
        # The classifier (a MiniLM, on CPU) scores batch n while the embedders embed batch n+1.
        # A quarter CPU reserved, like validation: with one whole CPU the stages would not all
        # fit on a 2-core machine (chunker 0.5 + embedder 1 + validation 0.25) and the stream
        # would stall; it encodes with the embedders' thread count all the same.
        return ds.map_batches(
            InjectionScanner,
            fn_constructor_args=(coll.injection_threshold, threads),
            batch_size=embed_batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_cpus=0.25,
            **restarts,
        )


def run(
    config: LLMOpsConfig,
    path: str,
    collection: str | None = None,
    tenant: str = "local",
    fields: RowFields | None = None,
    *,
    store: VectorStore | None = None,
    documents: ReadResult | None = None,
    embed_actors: int | None = None,
    embed_batch_size: int = 64,
    write_batch_chunks: int = 256,
    progress: bool = True,
    console: Console | None = None,
) -> IngestSummary:
    """Ingest ``path`` (a directory, glob or file) into ``collection`` for ``tenant``.

    Starts a local Ray cluster unless this process already joined one (and
    leaves it running for the next call).

    Args:
        store: an open store to write to (default: open the configured one, closed after).
        documents: documents already read (default: read ``path`` with ``fields``).
        embed_actors: most embedding actors (default: half the cluster's CPUs, 1 to 4).
        write_batch_chunks: chunks of new documents upserted per call.

    Raises:
        StoreLockedError: another process (a running ``llmops up``) holds the embedded store.
        FileNotFoundError, ValueError: unknown collection, unsupported or missing path.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t0, started = time.perf_counter(), time.time()
    coll = collection_config(config, collection)
    own_store = store is None
    store = store or open_store(config)
    qwriter = QuarantineWriter(quarantine_path(config.data_dir, coll.name, started))
    summary = IngestSummary(coll.name, tenant, store.describe())
    columns = (
        TextColumn("[bold]ingest[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("docs"),
    )
    try:
        read = documents or read_documents(path, fields)
        docs, dupes = dedupe_ids(read.documents)
        qwriter.write(read.quarantined + dupes)
        summary.docs_seen = len(read.documents) + len(read.quarantined)
        with Progress(*columns, TimeRemainingColumn(), console=console, disable=not progress) as bar:
            task = bar.add_task(f"{coll.name} (checking stored ids)", total=summary.docs_seen)
            bar.advance(task, qwriter.count)
            existing = existing_digests(store, coll, tenant, docs)
            writer = StoreWriter(store, coll, tenant, set(existing), write_batch_chunks)
            bar.update(task, description=coll.name)
            if docs:
                ensure_ray(config)
                quiet_ray_data()
                ds = build_dataset(config, coll, tenant, docs, existing, embed_actors, embed_batch_size)
                for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                    for i, kind in enumerate(batch["kind"]):
                        row = {k: batch[k][i] for k in batch}
                        if kind == "chunk":
                            bar.advance(task, int(writer.add(row)))
                            continue
                        if kind == "unchanged":
                            summary.unchanged += 1
                        else:
                            qwriter.write([quarantined_row(row)])
                        bar.advance(task)
                writer.flush()
            if writer.chunks or writer.stale:
                # the engine indexes only when asked: build HNSW once, at the end of the bulk load
                bar.update(task, description=f"{coll.name} (building the index)")
                t_index = time.perf_counter()
                store.optimize(coll.name)
                summary.index_s = time.perf_counter() - t_index
        if writer.pending:  # only if a stage dropped rows: never leave half a document unreported
            raise RuntimeError(f"chunks of {len(writer.pending)} document(s) never all arrived")
    finally:
        qwriter.close()
        if own_store:
            store.close()
    summary.docs_written, summary.chunks_written, summary.stale_deleted = (
        writer.docs,
        writer.chunks,
        writer.stale,
    )
    summary.quarantined = qwriter.count
    summary.quarantine_file = str(qwriter.path) if qwriter.count else None
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def delete_document(config: LLMOpsConfig, collection: str | None, doc_id: str, tenant: str = "local") -> int:
    """Remove one document's chunks; returns how many were deleted (0: no such document)."""
    coll = collection_config(config, collection)
    with open_store(config) as store:
        if not store.collection_exists(coll.name):
            return 0
        return store.delete_doc(coll.name, tenant, doc_id)
