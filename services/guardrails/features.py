"""Features of the trained guardrail classifiers: token windows, hashed lexical n-grams, embeddings.

Every trained head (:mod:`services.guardrails.classifier`) sees a text as windows of
MiniLM tokens (``window_tokens`` long, every ``stride_tokens``), so a long prompt is
scored piece by piece and max-pooled: an injection hidden in the middle of a long
benign document is not diluted by the rest. Each window has two views:

* **lexical**: hashed counts of its WordPiece unigrams and bigrams (``N_LEX_FEATURES``
  buckets, square-root damped, L2-normalised). They come from the token ids the
  windowing already needs, so they cost microseconds; the cascade scores *every*
  window with them to choose the few that get an embedding.
* **embedding**: the all-MiniLM-L6-v2 sentence vector of the window's text (384
  dims, unit length), from one process-wide encoder (:func:`shared_encoder`).

Training (:mod:`services.guardrails.train`) and serving call the same functions,
so the features a head was fitted on are the ones it is scored on.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MAX_WINDOWS",
    "DEFAULT_STRIDE_TOKENS",
    "DEFAULT_WINDOW_TOKENS",
    "N_LEX_FEATURES",
    "TextWindows",
    "lexical_matrix",
    "shared_encoder",
    "shared_tokenizer",
    "window_spans",
]

#: MiniLM tokens per window. all-MiniLM-L6-v2 was trained on 128-token inputs, and on a
#: 2-core CPU a 128-token window costs ~4 ms against ~12 ms for a 256-token one.
DEFAULT_WINDOW_TOKENS = 128
#: step between window starts: 32 tokens of overlap, so a short injection cut by one
#: window boundary lies whole in the next window.
DEFAULT_STRIDE_TOKENS = 96
#: windows per text and head that get an embedding; longer texts go through the cascade. Two
#: keeps the default input chain's two heads at <= 3 encoded windows (~12 ms here) for any
#: length; on the dev jailbreaks set in long benign text a third window changed little.
DEFAULT_MAX_WINDOWS = 2
#: hashed lexical buckets (a power of two): 2**15 keeps each head's weights ~130 KB.
N_LEX_FEATURES = 1 << 15
#: the hashing scheme's version, stored in artifacts: a head is only valid with its scheme.
LEX_SCHEME = "wordpiece-uni-bi-sqrt-l2-v1"

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_SALT_BI = np.uint64(0x165667B19E3779F9)


@functools.cache
def shared_encoder() -> Any:
    """The one MiniLM encoder of this process (openvino on CPU), shared by every trained head.

    Loading it takes seconds and ~100 MB: the injection, harmful and toxicity heads, the
    training script and the tests all take it from here instead of loading their own.

    Its inference threads: ``LLMOPS_GUARDRAILS_THREADS``, else up to 4 of the machine's
    cores. Not the caller's intra-op count: Ray sets ``OMP_NUM_THREADS=1`` in a gateway
    replica with ``num_cpus`` 0.25, and one thread makes the input check of a 2,000-token
    prompt ~1.5x slower (it is on every request's critical path).
    """
    from services.embeddings.encoder import Encoder

    return Encoder(backend="openvino", threads=encoder_threads())


def encoder_threads() -> int:
    """The guardrail encoder's inference threads (see :func:`shared_encoder`)."""
    raw = os.environ.get("LLMOPS_GUARDRAILS_THREADS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"LLMOPS_GUARDRAILS_THREADS must be a positive integer, got {raw!r}")
        return n
    return max(
        1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )


@functools.cache
def shared_tokenizer() -> Any:
    """The encoder's fast tokenizer (a copy without a length limit), for windows and offsets."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(shared_encoder().path), local_files_only=True)
    # A copy, so switching off its truncation (256 tokens in tokenizer.json) changes nothing else.
    bt = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    bt.no_truncation()
    bt.no_padding()
    return bt


def window_spans(n_tokens: int, window_tokens: int, stride_tokens: int) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` covering ``n_tokens``: every ``stride_tokens``, the last one
    ending at the text's end (so no window is a short tail that a longer one already holds)."""
    if n_tokens <= 0:
        return []
    if n_tokens <= window_tokens:
        return [(0, n_tokens)]
    starts = list(range(0, n_tokens - window_tokens + 1, stride_tokens))
    if starts[-1] + window_tokens < n_tokens:
        starts.append(n_tokens - window_tokens)
    return [(s, s + window_tokens) for s in starts]


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit multiplicative hash (wrapping), so nearby ids land in unrelated buckets."""
    with np.errstate(over="ignore"):
        x = x * _M1
        x ^= x >> np.uint64(29)
        x = x * _M2
        x ^= x >> np.uint64(32)
    return x


def token_hashes(ids: np.ndarray, n_features: int = N_LEX_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Bucket of each token's unigram (length n) and of each adjacent pair's bigram (n - 1)."""
    u = ids.astype(np.uint64) + np.uint64(1)
    mask = np.uint64(n_features - 1)
    uni = (_mix(u) & mask).astype(np.int64)
    if len(u) < 2:
        return uni, np.zeros(0, dtype=np.int64)
    with np.errstate(over="ignore"):
        pair = (u[:-1] * np.uint64(1_000_003)) ^ (u[1:] + _SALT_BI)
    bi = (_mix(pair) & mask).astype(np.int64)
    return uni, bi


def lexical_vector(uni: np.ndarray, bi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sparse lexical features of one window: bucket indices and their values.

    Square-root counts damp a repeated token (``"DAN " * 50`` is not 50 times the evidence);
    the L2 norm makes a window's features independent of its length.
    """
    h = np.concatenate([uni, bi])
    if len(h) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    idx, counts = np.unique(h, return_counts=True)
    val = np.sqrt(counts.astype(np.float32))
    val /= np.float32(np.linalg.norm(val))
    return idx, val


def lexical_matrix(vectors: Sequence[tuple[np.ndarray, np.ndarray]], n_features: int = N_LEX_FEATURES) -> Any:
    """Rows of :func:`lexical_vector` output as a SciPy CSR matrix (for training)."""
    from scipy import sparse

    indptr = np.zeros(len(vectors) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(i) for i, _ in vectors])
    indices = np.concatenate([i for i, _ in vectors]) if vectors else np.zeros(0, np.int64)
    data = np.concatenate([v for _, v in vectors]) if vectors else np.zeros(0, np.float32)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(vectors), n_features), dtype=np.float32)


@dataclass
class TextWindows:
    """One text cut into token windows, with each window's char span and lexical features.

    Built once per text and shared by every head that scores it (the tokenisation of a
    2,000-token prompt is ~3 ms, the largest cost after the embeddings). ``embeddings``
    fills in as windows are encoded, so a second head reuses the first head's vectors.
    """

    text: str
    window_tokens: int
    stride_tokens: int
    #: per window: (token start, token end, char start, char end)
    spans: list[tuple[int, int, int, int]]
    #: per window: (bucket indices, values)
    lexical: list[tuple[np.ndarray, np.ndarray]]
    #: the text's token ids (no special tokens)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        text: str,
        window_tokens: int = DEFAULT_WINDOW_TOKENS,
        stride_tokens: int = DEFAULT_STRIDE_TOKENS,
        n_features: int = N_LEX_FEATURES,
    ) -> TextWindows:
        enc = shared_tokenizer().encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int64)
        offsets = enc.offsets
        uni, bi = token_hashes(ids, n_features)
        spans: list[tuple[int, int, int, int]] = []
        lexical: list[tuple[np.ndarray, np.ndarray]] = []
        for t0, t1 in window_spans(len(ids), window_tokens, stride_tokens):
            spans.append((t0, t1, int(offsets[t0][0]), int(offsets[t1 - 1][1])))
            lexical.append(lexical_vector(uni[t0:t1], bi[t0 : t1 - 1]))
        return cls(text, window_tokens, stride_tokens, spans, lexical, ids)

    def __len__(self) -> int:
        return len(self.spans)

    def window_ids(self, i: int) -> np.ndarray:
        """Token ids of window ``i`` (what the encoder is fed, between [CLS] and [SEP])."""
        t0, t1, _, _ = self.spans[i]
        return self.ids[t0:t1]

    def window_text(self, i: int) -> str:
        """The text of window ``i`` as the encoder sees it (its original casing and spacing)."""
        _, _, c0, c1 = self.spans[i]
        return self.text[c0:c1]


_requests = threading.local()


def encode_ids(windows: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Unit-length embeddings of token-id windows (``[CLS] ids [SEP]``), one row each.

    The windows are already tokenised (that is how they were cut), so on the OpenVINO
    backend the ids go straight into the encoder's compiled graph: re-tokenising each
    window's text, as ``Encoder.encode`` would, costs ~0.5 ms a window and can split a
    window's first word differently. Other backends get the windows' decoded text.
    """
    enc = shared_encoder()
    if not windows:
        return np.zeros((0, enc.dimension), dtype=np.float32)
    compiled = getattr(enc, "_ov", None)
    if compiled is None:
        tok = shared_tokenizer()
        return np.asarray(enc.encode([tok.decode(w.tolist()) for w in windows], batch_size=batch_size))
    req = getattr(_requests, "req", None)
    if req is None or getattr(_requests, "compiled", None) is not compiled:
        req = _requests.req = compiled.create_infer_request()
        _requests.compiled = compiled
    cls_id, sep_id = _special_ids()
    out = np.empty((len(windows), enc.dimension), dtype=np.float32)
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))  # little padding per batch
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = len(windows[idx[0]]) + 2
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for r, i in enumerate(idx):
            w = windows[i]
            ids[r, 0], ids[r, 1 : len(w) + 1], ids[r, len(w) + 1] = cls_id, w, sep_id
            mask[r, : len(w) + 2] = 1
        res = req.infer({"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask})
        out[idx] = res[0]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@functools.cache
def _special_ids() -> tuple[int, int]:
    tok = shared_tokenizer()
    return int(tok.token_to_id("[CLS]")), int(tok.token_to_id("[SEP]"))


def embed_windows(items: Sequence[tuple[TextWindows, int]], batch_size: int = 32) -> None:
    """Encode the windows ``(text windows, index)`` that have no embedding yet, in one batch.

    One encoder call for every missing window of every text: the chain's texts and all
    heads asking at once share a single forward pass.
    """
    seen: set[tuple[int, int]] = set()
    uniq = []
    for tw, i in items:
        if i not in tw.embeddings and (id(tw), i) not in seen:
            seen.add((id(tw), i))
            uniq.append((tw, i))
    if not uniq:
        return
    vecs = encode_ids([tw.window_ids(i) for tw, i in uniq], batch_size=batch_size)
    for (tw, i), v in zip(uniq, vecs, strict=True):
        tw.embeddings[i] = v
