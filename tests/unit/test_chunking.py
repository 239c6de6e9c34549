"""Token-aware chunking: window sizes, exact overlap, verbatim slices, boundaries, stable ids."""

from __future__ import annotations

import itertools
import re

import pytest

from services.embeddings.encoder import Encoder
from services.retrieval.chunking import TokenizerLike, chunk_document, chunk_windows, token_offsets
from services.retrieval.types import Document, chunk_id, content_hash

pytestmark = pytest.mark.unit


class WordTokenizer:
    """One token per whitespace-separated word: easy to count by hand."""

    def __init__(self, max_seq_length: int = 512) -> None:
        self.max_seq_length = max_seq_length

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_word_tokenizer_is_tokenizer_like() -> None:
    assert isinstance(WordTokenizer(), TokenizerLike)


def test_windows_have_size_and_share_exactly_overlap_tokens() -> None:
    doc = Document(doc_id="d", text=words(100))
    chunks = chunk_document(doc, "t", WordTokenizer(), chunk_tokens=10, overlap=3)
    toks = [c.text.split() for c in chunks]
    assert all(len(t) <= 10 for t in toks)
    assert all(a[-3:] == b[:3] for a, b in itertools.pairwise(toks))
    # no boundaries in the text: full windows advancing by size - overlap, last one shorter
    assert toks[0] == [f"w{i}" for i in range(10)]
    assert toks[1][0] == "w7"
    assert len(chunks) == 14  # starts 0, 7, ..., 91
    assert toks[-1][-1] == "w99"
    assert [c.chunk_index for c in chunks] == list(range(14))
    assert all(c.doc_chunks == 14 for c in chunks)


def test_zero_overlap_partitions_the_tokens() -> None:
    doc = Document(doc_id="d", text=words(25))
    toks = [c.text.split() for c in chunk_document(doc, "t", WordTokenizer(), 10, 0)]
    assert [w for t in toks for w in t] == doc.text.split()


def test_chunk_tokens_zero_uses_model_window_minus_special_tokens() -> None:
    doc = Document(doc_id="d", text=words(30))
    chunks = chunk_document(doc, "t", WordTokenizer(max_seq_length=12), chunk_tokens=0, overlap=0)
    assert [len(c.text.split()) for c in chunks] == [10, 10, 10]


def test_cut_prefers_sentence_then_paragraph_in_last_fifth() -> None:
    # window 10: tokens 8 and 9 are in the last 20%; a sentence ends at token 8 ("w8.")
    text = "w0 w1 w2 w3 w4 w5 w6 w7 w8. w9 w10 w11"
    toks = [c.text.split() for c in chunk_document(Document("d", text), "t", WordTokenizer(), 10, 2)]
    assert toks[0][-1] == "w8."
    assert toks[1][:2] == ["w7", "w8."]  # overlap still exact after the moved cut
    # a paragraph break beats a later sentence end
    text = "w0 w1 w2 w3 w4 w5 w6 w7\n\nw8. w9 w10 w11"
    toks = [c.text.split() for c in chunk_document(Document("d", text), "t", WordTokenizer(), 10, 0)]
    assert toks[0][-1] == "w7"
    # a boundary earlier than the last 20% is not used
    text = "w0 w1 w2. " + words(20, start=3)
    toks = [c.text.split() for c in chunk_document(Document("d", text), "t", WordTokenizer(), 10, 0)]
    assert len(toks[0]) == 10


def test_large_overlap_still_progresses() -> None:
    text = "w0 w1 w2 w3 w4 w5 w6 w7 w8. w9 " + words(40, start=10)
    windows = chunk_windows(text, WordTokenizer().offsets(text), 10, 9)
    starts = [s for s, _ in windows]
    assert starts == sorted(set(starts))  # strictly increasing: no endless loop
    assert all(a_end - b_start == 9 for (_, a_end), (b_start, _) in itertools.pairwise(windows))
    assert windows[-1][1] == 50


def test_empty_or_whitespace_document_has_no_chunks(encoder: Encoder) -> None:
    assert chunk_document(Document("d", ""), "t", encoder, 0, 0) == []
    assert chunk_document(Document("d", " \n\t "), "t", encoder, 0, 0) == []


@pytest.mark.parametrize(("size", "overlap"), [(10, 10), (10, 12), (5, -1)])
def test_bad_sizes_rejected(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_document(Document("d", words(30)), "t", WordTokenizer(), size, overlap)


def test_real_tokenizer_windows_are_exact_and_slices_verbatim(encoder: Encoder) -> None:
    para = (
        "Qdrant stores VECTORS with payloads;  it supports filtering.\n"
        "Tokenization-aware chunking keeps   spacing, Casing and punctuation (e.g. naïve café)!\n\n"
    )
    text = para * 40
    doc = Document(doc_id="guide", text=text, metadata={"lang": "en"}, source="docs/guide.md")
    size, overlap = 64, 16
    chunks = chunk_document(doc, "acme", encoder, size, overlap)
    offsets = token_offsets(encoder, text)
    windows = chunk_windows(text, offsets, size, overlap)
    assert len(chunks) == len(windows) > 10
    pos = 0
    for c, (s, e) in zip(chunks, windows, strict=True):
        assert e - s <= size
        # a verbatim slice of the original text at the window's character span
        assert c.text == text[offsets[s][0] : offsets[e - 1][1]]
        pos = text.index(c.text, pos)
        assert c.text == c.text.strip()
        assert c.source == "docs/guide.md" and c.metadata == {"lang": "en"}
        assert c.tenant == "acme" and c.doc_id == "guide" and c.doc_chunks == len(chunks)
    for (_, a_end), (b_start, _) in itertools.pairwise(windows):
        assert a_end - b_start == overlap
    assert windows[0][0] == 0 and windows[-1][1] == len(offsets)
    # re-tokenized alone, a chunk stays within its window (+2 special tokens, +1 for a split word)
    assert max(encoder.count_tokens([c.text for c in chunks])) <= size + 3


def test_default_size_fits_the_embedding_model(encoder: Encoder) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 200
    chunks = chunk_document(Document("d", text), "t", encoder, 0, 32)
    n_tokens = encoder.count_tokens([c.text for c in chunks])
    assert max(n_tokens) <= encoder.max_seq_length
    assert min(n_tokens[:-1]) > 0.8 * (encoder.max_seq_length - 2)


def test_long_document_is_tokenized_once_and_covered(encoder: Encoder) -> None:
    text = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 5000).strip()  # ~285k chars
    chunks = chunk_document(Document("big", text), "t", encoder, 256, 0)
    # zero overlap: the chunks tile the text, separated only by whitespace
    assert re.sub(r"\s+", "", "".join(c.text for c in chunks)) == re.sub(r"\s+", "", text)


def test_ids_are_deterministic_and_follow_content(encoder: Encoder) -> None:
    text = "First sentence here. " * 60 + "The ending is original."
    doc = Document("d1", text)
    a = chunk_document(doc, "t1", encoder, 48, 8)
    b = chunk_document(doc, "t1", encoder, 48, 8)
    assert [c.id for c in a] == [c.id for c in b]
    assert [c.id for c in a] == [chunk_id("t1", "d1", c.chunk_index, content_hash(c.text)) for c in a]
    assert all(c.content_hash == content_hash(c.text) for c in a)
    # same text, other tenant or document: other ids
    assert not {c.id for c in a} & {c.id for c in chunk_document(doc, "t2", encoder, 48, 8)}
    assert not {c.id for c in a} & {c.id for c in chunk_document(Document("d2", text), "t1", encoder, 48, 8)}
    # an edit at the end changes the ids of the chunks holding it, and only those
    changed = chunk_document(Document("d1", text.replace("original", "edited")), "t1", encoder, 48, 8)
    assert changed[0].id == a[0].id
    assert changed[-1].id != a[-1].id
    assert all(c.id in {x.id for x in a} for c in changed if "edited" not in c.text)
