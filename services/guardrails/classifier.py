"""The trained guardrail classifiers: logistic-regression heads over MiniLM windows.

A head (``prompt_injection``, ``harmful``, ``toxicity``; artifacts in
``services/guardrails/models``, made by ``python -m services.guardrails.train``) is two
linear models over the features of :mod:`services.guardrails.features`:

* the **prefilter**: lexical n-grams only, microseconds per window;
* the **scorer**: the window's MiniLM embedding plus the same lexical n-grams.

Scoring a text (``ClassifierCheck.scores``): cut it into token windows; a text of at
most ``max_windows`` windows has every window embedded; a longer one goes through the
cascade: the prefilter scores *every* window and only ``max_windows`` of them are
embedded and scored: the prefilter's best, then the first window (where a jailbreak
template usually starts), the last, the prefilter's next best. The text's score
is the highest window probability (max-pooling), its finding spans that window.

**One encode for all heads.** Heads with the same window geometry form a process-wide
group (:func:`_group`). When one check of the group scans a text, the group scores that
text for *every* head it has, embedding the union of their chosen windows in one
``encode`` call, and keeps the results in a small per-text cache; the next check of the
chain (the same texts, e.g. ``harmful`` after ``prompt_injection``) finds its scores
there and costs a dict lookup. Each head pools over its own chosen windows only, so a
head's score does not depend on which other heads are loaded. The chain needs nothing
special for this; :func:`scan_many` is the explicit form for callers that hold several
checks.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.guardrails.base import Finding
from services.guardrails.features import (
    DEFAULT_MAX_WINDOWS,
    LEX_SCHEME,
    TextWindows,
    embed_windows,
)

__all__ = ["MODELS_DIR", "TRAINED_KINDS", "ClassifierCheck", "Head", "default_artifact", "scan_many"]

MODELS_DIR = Path(__file__).resolve().parent / "models"
TRAINED_KINDS = ("prompt_injection", "harmful", "toxicity")
#: texts whose scores a group keeps (the chain's checks of one request ask about the same texts)
_CACHE_TEXTS = 256


def default_artifact(kind: str) -> Path:
    """The shipped artifact of a trained head."""
    if kind not in TRAINED_KINDS:
        raise ValueError(f"no shipped classifier for {kind!r}; trained kinds: {', '.join(TRAINED_KINDS)}")
    return MODELS_DIR / f"{kind}.npz"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0))))


@dataclass(frozen=True, eq=False)
class Head:
    """One trained head: its two linear models, threshold and window geometry."""

    kind: str
    threshold: float
    emb_w: np.ndarray  # (dim,) scorer weights on the embedding
    lex_w: np.ndarray  # (n_features,) scorer weights on the lexical n-grams
    bias: float
    pre_w: np.ndarray  # (n_features,) prefilter weights
    pre_b: float
    window_tokens: int
    stride_tokens: int
    max_windows: int
    meta: Mapping[str, Any]

    @property
    def n_features(self) -> int:
        return int(self.lex_w.shape[0])

    @classmethod
    def load(cls, path: str | Path) -> Head:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"path: no classifier artifact at {str(p)!r} (train one with python -m services.guardrails.train)"
            )
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {
                k: np.asarray(z[k], dtype=np.float32) for k in ("emb_w", "lex_w", "pre_w", "bias", "pre_b")
            }
        if meta.get("lex_scheme") != LEX_SCHEME:
            raise ValueError(
                f"path: artifact {str(p)!r} uses lexical scheme {meta.get('lex_scheme')!r}, "
                f"this code {LEX_SCHEME!r}; retrain it"
            )
        return cls(
            kind=str(meta["kind"]),
            threshold=float(meta["threshold"]),
            emb_w=arrays["emb_w"],
            lex_w=arrays["lex_w"],
            bias=float(arrays["bias"].reshape(-1)[0]),
            pre_w=arrays["pre_w"],
            pre_b=float(arrays["pre_b"].reshape(-1)[0]),
            window_tokens=int(meta["window_tokens"]),
            stride_tokens=int(meta["stride_tokens"]),
            max_windows=int(meta["max_windows"]),
            meta=meta,
        )

    def save(self, path: str | Path) -> None:
        """Write the artifact (float32 weights, metadata as JSON): deterministic bytes for equal heads."""
        meta = dict(self.meta)
        meta.update(
            kind=self.kind,
            threshold=self.threshold,
            window_tokens=self.window_tokens,
            stride_tokens=self.stride_tokens,
            max_windows=self.max_windows,
            lex_scheme=LEX_SCHEME,
        )
        arrays = {
            "meta": np.array(json.dumps(meta, sort_keys=True)),
            "emb_w": self.emb_w.astype(np.float32),
            "lex_w": self.lex_w.astype(np.float32),
            "bias": np.array([self.bias], np.float32),
            "pre_w": self.pre_w.astype(np.float32),
            "pre_b": np.array([self.pre_b], np.float32),
        }
        # An .npz np.load reads, written by hand: np.savez stamps each member with the current
        # time, and a retrained artifact should equal the committed one byte for byte.
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue())

    # -- scoring ------------------------------------------------------------------------
    def prefilter(self, tw: TextWindows) -> np.ndarray:
        """Lexical-only logit of every window (the cascade's cheap pass)."""
        return np.array([float(self.pre_w[i] @ v) for i, v in tw.lexical], dtype=np.float32) + self.pre_b

    def picks(self, tw: TextWindows, max_windows: int) -> list[int]:
        """Windows to embed: all of a short text; else the prefilter's best, the first, the last, and
        the prefilter's next best, up to ``max_windows``."""
        n = len(tw)
        if n <= max_windows:
            return list(range(n))
        order = np.argsort(-self.prefilter(tw), kind="stable").tolist()
        # the prefilter's best always; then the ends (where injections usually sit); then its next best
        chosen = list(dict.fromkeys([order[0], 0, n - 1, *order[1:]]))
        return sorted(chosen[:max_windows])

    def window_probs(self, tw: TextWindows, windows: Sequence[int]) -> np.ndarray:
        """Scorer probability of each of ``windows`` (their embeddings must be in ``tw``)."""
        z = [
            float(self.emb_w @ tw.embeddings[i]) + float(self.lex_w[tw.lexical[i][0]] @ tw.lexical[i][1])
            for i in windows
        ]
        return _sigmoid(np.asarray(z, dtype=np.float64) + self.bias)

    def pool(self, tw: TextWindows, windows: Sequence[int]) -> tuple[float, int]:
        """Max-pooled probability over ``windows`` and the window that has it (-1: no windows)."""
        if not windows:
            return 0.0, -1
        p = self.window_probs(tw, windows)
        best = int(np.argmax(p))
        return float(p[best]), int(windows[best])


# -- the process-wide groups --------------------------------------------------------------
@dataclass
class _Entry:
    tw: TextWindows
    results: dict[tuple[str, int], tuple[float, int]]


class _Group:
    """Heads sharing a window geometry, and the texts they scored recently (see the module doc)."""

    def __init__(self, window_tokens: int, stride_tokens: int, n_features: int) -> None:
        self.window_tokens = window_tokens
        self.stride_tokens = stride_tokens
        self.n_features = n_features
        self.heads: dict[tuple[str, int], tuple[Head, int]] = {}
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: tuple[str, int], head: Head, max_windows: int) -> None:
        with self._lock:
            self.heads.setdefault(key, (head, max_windows))

    def _entry(self, text: str) -> _Entry:
        with self._lock:
            e = self._cache.get(text)
            if e is not None:
                self._cache.move_to_end(text)
                return e
        e = _Entry(TextWindows.build(text, self.window_tokens, self.stride_tokens, self.n_features), {})
        with self._lock:
            e = self._cache.setdefault(text, e)
            while len(self._cache) > _CACHE_TEXTS:
                self._cache.popitem(last=False)
        return e

    def results(self, key: tuple[str, int], texts: Sequence[str]) -> list[tuple[float, int, TextWindows]]:
        """``(score, best window, windows)`` per text for the head ``key``; scores every head of
        the group on the texts that lack it, with one encode of all their chosen windows."""
        entries = [self._entry(t) for t in texts]
        with self._lock:
            heads = dict(self.heads)
        todo: list[tuple[_Entry, tuple[str, int], list[int]]] = []
        for e in entries:
            for hk, (head, mw) in heads.items():
                if hk not in e.results:
                    todo.append((e, hk, head.picks(e.tw, mw)))
        if todo:
            embed_windows([(e.tw, i) for e, _, picks in todo for i in picks])
            for e, hk, picks in todo:
                e.results[hk] = heads[hk][0].pool(e.tw, picks)
        return [(*e.results[key], e.tw) for e in entries]


_groups: dict[tuple[int, int, int], _Group] = {}
_groups_lock = threading.Lock()


def _group(head: Head) -> _Group:
    k = (head.window_tokens, head.stride_tokens, head.n_features)
    with _groups_lock:
        if k not in _groups:
            _groups[k] = _Group(*k)
        return _groups[k]


class ClassifierCheck:
    """A trained head as a guardrail check (see the module docstring for how it scores).

    Args:
        kind: ``prompt_injection``, ``harmful`` or ``toxicity`` (the finding label).
        artifact: another artifact than the shipped ``models/<kind>.npz`` (the config's ``path``).
        threshold: score at or above which a text is a finding (default: the card's, chosen on dev).
        window_tokens, stride_tokens: window geometry (default: the artifact's, which it was
            trained on; another one changes what the head sees).
        max_windows: windows per text that get an embedding (default: the artifact's); more is
            slower and can only raise a long text's score.
    """

    spans = False

    def __init__(
        self,
        kind: str,
        artifact: str | Path | None = None,
        threshold: float | None = None,
        window_tokens: int | None = None,
        stride_tokens: int | None = None,
        max_windows: int | None = None,
    ) -> None:
        path = Path(artifact).expanduser() if artifact else default_artifact(kind)
        head = Head.load(path)
        if head.kind != kind:
            raise ValueError(f"path: artifact {str(path)!r} is a {head.kind!r} head, not {kind!r}")
        if window_tokens is not None or stride_tokens is not None:
            wt = window_tokens or head.window_tokens
            st = stride_tokens or head.stride_tokens
            if not 8 <= wt <= 254 or not 1 <= st <= wt:
                raise ValueError(
                    f"window_tokens must be 8..254 and stride_tokens 1..window_tokens, got {wt}/{st}"
                )
            head = Head(**{**head.__dict__, "window_tokens": wt, "stride_tokens": st})
        mw = max_windows if max_windows is not None else head.max_windows or DEFAULT_MAX_WINDOWS
        if mw < 1:
            raise ValueError(f"max_windows must be at least 1, got {mw}")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.kind = kind
        self.head = head
        self.path = path
        self.max_windows = mw
        self.threshold = float(threshold) if threshold is not None else head.threshold
        self._key = (str(path.resolve()) + f"#{head.window_tokens}/{head.stride_tokens}", mw)
        self._group = _group(head)
        self._group.add(self._key, head, mw)

    def details(self, texts: Sequence[str]) -> list[tuple[float, int, int]]:
        """Per text: ``(score, char start, char end)`` of its highest-scoring window."""
        out = []
        for score, best, tw in self._group.results(self._key, texts):
            _, _, c0, c1 = tw.spans[best] if best >= 0 else (0, 0, 0, 0)
            out.append((score, c0, c1))
        return out

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Per text, the max-pooled probability over its scored windows (0.0 for an empty text)."""
        return [s for s, _, _ in self.details(texts)]

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        """One finding per text at or over the threshold, spanning its top window."""
        return [
            [Finding(self.kind, c0, c1, s)] if s >= self.threshold else []
            for s, c0, c1 in self.details(texts)
        ]


def scan_many(checks: Sequence[ClassifierCheck], texts: Sequence[str]) -> dict[str, list[list[Finding]]]:
    """Every check's findings on ``texts``, keyed by kind; checks of one group share one encode.

    (Calling each check's ``scan`` in turn does the same: the first call scores all heads of
    the group and the rest read the group's cache. This names the pattern for callers.)
    """
    return {c.kind: c.scan(texts) for c in checks}
