"""The Ray Data stages of ingestion, and the row format they share.

Stages run in Ray workers on ``numpy`` batches (dicts of arrays). From
chunking on, every row has a ``kind``: ``chunk`` (one chunk of a new or changed
document), ``unchanged`` (one row for a document whose chunk ids all exist in
the store already) or ``quarantined`` (one row for a document that failed
validation), so one stream brings everything back to the driver.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.ingest.validate import QuarantineRecord, build_frame, validator_for

if TYPE_CHECKING:
    from services.retrieval.types import Chunk

COLUMNS: dict[str, Any] = {  # column → value when a row has none
    "kind": "",
    "doc_id": "",
    "chunk_id": "",
    "chunk_index": -1,
    "text": "",
    "content_hash": "",
    "source": "",
    "metadata": "{}",
    "doc_chunks": 0,
    "failed": "[]",
}
_INTS = {"chunk_index", "doc_chunks"}


def _strings(values: Iterable[Any]) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def ids_digest(ids: Iterable[str]) -> str:
    """Order-free digest of a set of point ids (what the unchanged check compares)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32]


def validate_batch(batch: dict[str, Any], collection_json: str) -> dict[str, Any]:
    """Adds ``failed``: the JSON list of the expectations each document broke.

    A plain function (Ray tasks): the GX context is cached per worker process.
    """
    validator = validator_for(collection_json)
    metas = [json.loads(m) for m in batch["metadata"]]
    frame = build_frame(
        list(batch["doc_id"]), list(batch["text"]), metas, validator.collection.required_metadata
    )
    failed = validator.check_frame(frame)
    return {**batch, "failed": _strings(json.dumps(f) for f in failed)}


class ModelTokenizer:
    """What chunking needs from the embedding model (its tokenizer and window), without its weights.

    Loading only the tokenizer takes about a third of the time of the whole
    model. It is used only where the window is certain to be what
    sentence-transformers would use: the first module is the Transformer at
    the model's root and ``sentence_bert_config.json`` names ``max_seq_length``
    (:func:`load_tokenizer` falls back to the full :class:`Encoder` otherwise).
    """

    def __init__(self, path: str | None) -> None:
        from transformers import AutoTokenizer

        from services.embeddings.encoder import resolve_model_path

        root = resolve_model_path(path)
        modules = json.loads((root / "modules.json").read_text())
        if (
            not modules
            or modules[0].get("path") != ""
            or not modules[0].get("type", "").endswith("Transformer")
        ):
            raise ValueError("first module is not a root Transformer")
        self.max_seq_length = int(
            json.loads((root / "sentence_bert_config.json").read_text())["max_seq_length"]
        )
        self._tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        self._tok.model_max_length = 1 << 30  # count whole documents; chunking cuts them

    def offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def load_tokenizer(path: str | None) -> Any:
    """A :class:`ModelTokenizer` where that is exact, else the full :class:`Encoder`."""
    try:
        return ModelTokenizer(path)
    except (OSError, ValueError, KeyError, TypeError):
        from services.embeddings.encoder import Encoder

        return Encoder(path, "cpu")


class Chunker:
    """Token-aware chunks of valid documents; one marker row per quarantined or unchanged one.

    ``existing`` maps each document already in the store to :func:`ids_digest`
    of its point ids: equal digests mean nothing to embed or write.
    """

    def __init__(
        self, model_path: str | None, tenant: str, chunk_tokens: int, overlap: int, existing: dict[str, str]
    ) -> None:
        self.tokenizer = load_tokenizer(model_path)
        self.tenant, self.chunk_tokens, self.overlap, self.existing = tenant, chunk_tokens, overlap, existing

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from services.retrieval.chunking import chunk_document
        from services.retrieval.types import Document

        out: dict[str, list[Any]] = {c: [] for c in COLUMNS}

        def emit(**values: Any) -> None:
            for c, default in COLUMNS.items():
                out[c].append(values.get(c, default))

        for doc_id, text, meta, source, failed in zip(
            batch["doc_id"], batch["text"], batch["metadata"], batch["source"], batch["failed"], strict=True
        ):
            common = {"doc_id": doc_id, "source": source}
            if failed != "[]":
                emit(kind="quarantined", text=text, metadata=meta, failed=failed, **common)
                continue
            doc = Document(str(doc_id), str(text), json.loads(meta), str(source))
            chunks = chunk_document(doc, self.tenant, self.tokenizer, self.chunk_tokens, self.overlap)
            if not chunks:
                emit(kind="quarantined", text=text, metadata=meta, failed='["chunking_no_tokens"]', **common)
            elif self.existing.get(doc.doc_id) == ids_digest(c.id for c in chunks):
                emit(kind="unchanged", doc_chunks=len(chunks), **common)
            else:
                meta_json = json.dumps(chunks[0].metadata, ensure_ascii=False)
                for c in chunks:
                    emit(
                        kind="chunk",
                        chunk_id=c.id,
                        chunk_index=c.chunk_index,
                        text=c.text,
                        content_hash=c.content_hash,
                        metadata=meta_json,
                        doc_chunks=c.doc_chunks,
                        **common,
                    )
        return {c: np.array(v, dtype=np.int64) if c in _INTS else _strings(v) for c, v in out.items()}


class Embedder:
    """Dense embeddings (and BM25 sparse vectors) of the ``chunk`` rows of a batch.

    Vectors travel as bytes (float32) and JSON, empty for other rows. The model
    loads in a background thread from the start, so loading overlaps chunking,
    and a batch without chunks (a re-run where every document is unchanged)
    never waits for it.
    """

    def __init__(
        self,
        model_path: str | None,
        device: str,
        hybrid: bool,
        batch_size: int,
        threads: int | None = None,
        backend: str = "torch",
        precision: str = "auto",
        cache_dir: str | None = None,
        encoder: Any = None,
    ) -> None:
        """``backend``/``precision``/``cache_dir``: as the embedding model's config (the same
        forward pass as the embeddings deployment, so documents and queries match).
        ``encoder``: an already loaded :class:`Encoder` to use instead (tests, in-process use)."""
        import threading

        from services.retrieval.sparse import BM25Encoder

        self.batch_size = batch_size
        self.sparse = BM25Encoder() if hybrid else None
        self._encoder: Any = encoder
        self._error: BaseException | None = None
        self.threads = threads
        self._loader = threading.Thread(
            target=self._load, args=(model_path, device, backend, precision, cache_dir), daemon=True
        )
        if encoder is None:
            self._loader.start()

    def _load(
        self, model_path: str | None, device: str, backend: str, precision: str, cache_dir: str | None
    ) -> None:
        try:
            from services.embeddings.encoder import Encoder

            self._encoder = Encoder(
                model_path,
                device,
                backend,
                threads=self.threads,
                cache_dir=cache_dir,
                precision=precision,  # type: ignore[arg-type]
            )
        except BaseException as exc:  # re-raised in the batch that needs the model
            self._error = exc

    @property
    def encoder(self) -> Any:
        """The loaded :class:`Encoder` (waits for the background load)."""
        if self._loader.is_alive():
            self._loader.join()
        if self._error is not None:
            raise RuntimeError(f"loading the embedding model failed: {self._error}") from self._error
        return self._encoder

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        kinds = list(batch["kind"])
        idx = [i for i, k in enumerate(kinds) if k == "chunk"]
        texts = [str(batch["text"][i]) for i in idx]
        dense = np.array([b"" for _ in kinds], dtype=object)
        sparse = ["" for _ in kinds]
        if idx:
            encoder = self.encoder
            if self.threads:
                import torch

                # per call: OpenMP thread counts are per calling thread, and Ray may
                # call from different threads; Ray's OMP_NUM_THREADS default is 1
                torch.set_num_threads(self.threads)
            vectors = encoder.encode(texts, batch_size=self.batch_size)
            for i, vec in zip(idx, vectors, strict=True):
                dense[i] = np.asarray(vec, dtype=np.float32).tobytes()
        if self.sparse is not None:
            for i, sv in zip(idx, self.sparse.encode_documents(texts), strict=True):
                sparse[i] = json.dumps([list(sv.indices), list(sv.values)])
        return {**batch, "dense": dense, "sparse": _strings(sparse)}


class InjectionScanner:
    """The prompt_injection score of the ``chunk`` rows of a batch (collections with scan_injection).

    Adds ``injection_score`` (float64, NaN for other rows) and ``injection_flagged`` (bool):
    the store writer puts both into the chunk's payload (:func:`scanned`). Like
    :class:`Embedder`, the classifier loads in a background thread from the start and a
    batch without chunks never waits for it. ``scorer``: one already loaded (tests).
    """

    def __init__(self, threshold: float | None, threads: int | None = None, scorer: Any = None) -> None:
        import threading

        self.threads = threads
        self._scorer: Any = scorer
        self._error: BaseException | None = None
        self._loader = threading.Thread(target=self._load, args=(threshold,), daemon=True)
        if scorer is None:
            self._loader.start()

    def _load(self, threshold: float | None) -> None:
        try:
            from services.retrieval.chunking import injection_scorer

            self._scorer = injection_scorer(threshold)
        except BaseException as exc:  # re-raised in the batch that needs the classifier
            self._error = exc

    @property
    def scorer(self) -> Any:
        if self._loader.is_alive():
            self._loader.join()
        if self._error is not None:
            raise RuntimeError(
                f"loading the prompt_injection classifier failed: {self._error}"
            ) from self._error
        return self._scorer

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        kinds = list(batch["kind"])
        idx = [i for i, k in enumerate(kinds) if k == "chunk"]
        scores = np.full(len(kinds), math.nan, dtype=np.float64)
        flagged = np.zeros(len(kinds), dtype=bool)
        if idx:
            scorer = self.scorer
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)  # per call, as in Embedder
            found = scorer.scores([str(batch["text"][i]) for i in idx])
            for i, score in zip(idx, found, strict=True):
                scores[i] = float(score)
                flagged[i] = float(score) >= scorer.threshold
        return {**batch, "injection_score": scores, "injection_flagged": flagged}


def scanned(chunk: Chunk, row: dict[str, Any]) -> Chunk:
    """``chunk`` with the scan result of its row (unchanged when the row was not scanned)."""
    from dataclasses import replace

    score = row.get("injection_score")
    if score is None or math.isnan(float(score)):
        return chunk
    return replace(chunk, injection_score=float(score), injection_flagged=bool(row["injection_flagged"]))


def quarantined_row(row: dict[str, Any]) -> QuarantineRecord:
    """The quarantine record of a ``quarantined`` row."""
    text = str(row["text"])
    record = {
        "id": str(row["doc_id"]),
        "text": text[:2000] + ("…" if len(text) > 2000 else ""),
        "text_chars": len(text),
        "metadata": json.loads(row["metadata"]),
        "source": str(row["source"]),
    }
    return QuarantineRecord(
        str(row["doc_id"]),
        tuple(json.loads(row["failed"])),
        str(row["source"]),
        None,
        "failed validation",
        record,
    )
