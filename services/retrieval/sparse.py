"""BM25-style sparse vectors for hybrid (keyword + dense) retrieval.

The encoder only does the per-document half of BM25: term-frequency saturation
and length normalisation. The other half, inverse document frequency, is applied
by Qdrant at query time because the collection's sparse vector is created with
``modifier=IDF`` (:meth:`services.retrieval.store.VectorStore.ensure_collection`);
the engine (Qdrant Edge, a server, or qdrant-client's local mode) keeps the document frequencies up to
date as points are written and deleted, so no corpus statistics live here.

A document term's weight is ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``
and a query term's weight is 1.0, so the dot product Qdrant computes is the BM25
score ``sum(idf(t) * weight(t, d))`` over the query's unique terms.

Term ids are ``crc32(term) mod 2**31``: stable across processes and Python
versions (unlike the salted built-in ``hash``), so documents ingested by a batch
job and queries encoded in a Serve replica agree. Two terms may collide on an
id; with 2**31 buckets that is rare and costs only a little precision.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

from services.retrieval.types import SparseVector

# \w is Unicode-aware for str patterns: letters and digits of any script, and "_".
_WORD = re.compile(r"\w+")
_MAX_TERM_CHARS = 64  # longer "words" are base64 blobs or hashes: keep a prefix

# A small, conventional English stopword list (function words only): terms that
# carry no keyword signal and would only add noise and postings.
DEFAULT_STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me
    more most my myself no nor not of off on once only or other our ours ourselves out over own same
    she should so some such than that the their theirs them themselves then there these they this
    those through to too under until up very was we were what when where which while who whom why
    will with would you your yours yourself yourselves
    """.split()  # noqa: SIM905 (a list literal would take 150 lines)
)

_TERM_SPACE = 2**31


def stem(term: str) -> str:
    """A deliberately light, deterministic plural folder: ``queries`` → ``query``, ``vectors`` → ``vector``.

    Only regular English plurals are folded; anything cleverer (Porter) changes
    rare identifiers, which are exactly what keyword search is for.
    """
    if len(term) <= 3 or not term.isalpha():
        return term
    if term.endswith("ies") and len(term) > 4:
        return term[:-3] + "y"
    if term.endswith("sses"):
        return term[:-2]
    if term.endswith("s") and not term.endswith(("ss", "us", "is")):
        return term[:-1]
    return term


def tokenize(text: str, stopwords: frozenset[str] = DEFAULT_STOPWORDS) -> list[str]:
    """Lower-cased, stemmed word terms of ``text`` without stopwords, in order."""
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        if word in stopwords:
            continue
        out.append(stem(word[:_MAX_TERM_CHARS]))
    return out


def term_index(term: str) -> int:
    """The sparse-vector index of a term: ``crc32(utf-8) mod 2**31``."""
    return zlib.crc32(term.encode("utf-8")) % _TERM_SPACE


class BM25Encoder:
    """Encodes documents and queries into BM25-style sparse vectors.

    Args:
        k1: term-frequency saturation (higher: repeated terms keep adding weight).
        b: length normalisation strength, 0 (none) to 1 (full).
        avgdl: the assumed average document length in terms. A constant rather
            than a corpus statistic, so encoding needs no state and chunks written
            at different times stay comparable; chunks are bounded by the
            embedding window, which keeps their lengths near it.
        stopwords: terms to drop.
    """

    def __init__(
        self,
        k1: float = 1.2,
        b: float = 0.75,
        avgdl: float = 256.0,
        stopwords: Iterable[str] = DEFAULT_STOPWORDS,
    ) -> None:
        if k1 < 0:
            raise ValueError(f"k1 must be >= 0; got {k1}")
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"b must be between 0 and 1; got {b}")
        if avgdl <= 0:
            raise ValueError(f"avgdl must be > 0; got {avgdl}")
        self.k1 = k1
        self.b = b
        self.avgdl = avgdl
        self.stopwords = frozenset(stopwords)

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.stopwords)

    def encode_document(self, text: str) -> SparseVector:
        """The BM25 document-side weights of one text (no IDF)."""
        terms = self.tokenize(text)
        if not terms:
            return SparseVector(indices=(), values=())
        norm = self.k1 * (1.0 - self.b + self.b * len(terms) / self.avgdl)
        tf_by_index: Counter[int] = Counter(term_index(t) for t in terms)  # collisions add up
        indices = sorted(tf_by_index)
        values = tuple(tf_by_index[i] * (self.k1 + 1.0) / (tf_by_index[i] + norm) for i in indices)
        return SparseVector(indices=tuple(indices), values=values)

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """One sparse vector per text; an empty vector for a text with no terms."""
        return [self.encode_document(t) for t in texts]

    def encode_query(self, text: str) -> SparseVector:
        """Weight 1.0 per unique query term: Qdrant multiplies in the IDF."""
        indices = sorted({term_index(t) for t in self.tokenize(text)})
        return SparseVector(indices=tuple(indices), values=tuple(1.0 for _ in indices))
