"""Evaluation datasets shipped with the project (small, real, attributed).

Only files under ``evals/data/`` are read; see each folder's ``ATTRIBUTION.md``.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.retrieval.types import Document

DATA_DIR = Path(__file__).resolve().parent / "data"
SQUAD_PATH = DATA_DIR / "squad" / "squad2_dev_half.json.gz"
SQUAD_SOURCE = "squad2-dev-half"

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(title: str) -> str:
    """``"1973_oil_crisis"`` → ``"1973-oil-crisis"``: lower-case letters and digits joined by ``-``."""
    return _NOT_SLUG.sub("-", title.lower()).strip("-") or "untitled"


@dataclass(frozen=True)
class RetrievalQuery:
    """A question and the document(s) that answer it.

    Attributes:
        qid: the question's id in its dataset.
        text: the question.
        relevant_doc_ids: ids of the documents that hold the answer (SQuAD: exactly one).
        answers: reference answer strings (unique, in dataset order); empty when unanswerable.
    """

    qid: str
    text: str
    relevant_doc_ids: tuple[str, ...]
    answers: tuple[str, ...] = ()

    @property
    def doc_id(self) -> str:
        """The first (for SQuAD: the only) relevant document."""
        return self.relevant_doc_ids[0]


@dataclass(frozen=True)
class SquadSet:
    """SQuAD 2.0 as a retrieval set.

    Attributes:
        paragraphs: every paragraph as a :class:`Document` (the retrieval corpus).
        questions: the answerable questions, each with its paragraph as the gold document.
        unanswerable: the unanswerable questions (gold document: the paragraph they were
            asked about, which does not hold an answer).
        articles: article titles in dataset order.
    """

    paragraphs: list[Document]
    questions: list[RetrievalQuery]
    unanswerable: list[RetrievalQuery] = field(default_factory=list)
    articles: list[str] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic: accept both the shipped .gz and a plain copy
        raw = gzip.decompress(raw)
    return json.loads(raw)


def load_squad(path: str | Path | None = None) -> SquadSet:
    """Load the shipped SQuAD 2.0 dev half (or a file in the same compact format).

    Document ids are ``f"{slugify(title)}-{paragraph_index}"`` (e.g. ``normans-0``),
    stable as long as the file's order is. Each document's metadata holds
    ``title`` and ``article_index``; its source is ``"squad2-dev-half"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not in the compact format (``articles`` → ``paragraphs``).
    """
    p = Path(path) if path is not None else SQUAD_PATH
    data = _read_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("articles"), list):
        raise ValueError(
            f"{p} is not a compact SQuAD file (expected an 'articles' list; see evals/data/squad)"
        )
    paragraphs: list[Document] = []
    answerable: list[RetrievalQuery] = []
    unanswerable: list[RetrievalQuery] = []
    titles: list[str] = []
    slugs: set[str] = set()
    for a_idx, art in enumerate(data["articles"]):
        title = str(art["title"])
        slug = slugify(title)
        if slug in slugs:  # two titles slugging alike would merge their ids
            slug = f"{slug}-a{a_idx}"
        slugs.add(slug)
        titles.append(title)
        for p_idx, para in enumerate(art["paragraphs"]):
            doc_id = f"{slug}-{p_idx}"
            paragraphs.append(
                Document(
                    doc_id=doc_id,
                    text=str(para["context"]),
                    metadata={"title": title, "article_index": a_idx, "paragraph_index": p_idx},
                    source=SQUAD_SOURCE,
                )
            )
            for qa in para["qas"]:
                answers = tuple(dict.fromkeys(str(t) for t, _start in qa["answers"]))
                q = RetrievalQuery(
                    qid=str(qa["id"]), text=str(qa["question"]), relevant_doc_ids=(doc_id,), answers=answers
                )
                (answerable if qa["answerable"] else unanswerable).append(q)
    return SquadSet(paragraphs=paragraphs, questions=answerable, unanswerable=unanswerable, articles=titles)


def sample_corpus() -> list[Document]:
    """The SQuAD paragraphs (646 Wikipedia passages, 16 topics): the demo collection's seed."""
    return load_squad().paragraphs


REALSUMM_DIR = DATA_DIR / "realsumm"
REALSUMM_SYSTEMS = ("bart_out", "t5_out_base", "t5_out_small")


@dataclass(frozen=True)
class RealSumm:
    """REALSumm's 100 CNN/DailyMail test articles, aligned by index: ``sources`` (articles),
    ``references`` (reference summaries) and ``systems`` (name -> that system's summaries)."""

    sources: list[str]
    references: list[str]
    systems: dict[str, list[str]]


def load_realsumm(root: str | Path | None = None) -> RealSumm:
    """Load the shipped REALSumm files (see evals/data/realsumm/ATTRIBUTION.md).

    Raises:
        ValueError: the files do not hold the same number of documents.
    """
    base = Path(root) if root is not None else REALSUMM_DIR

    def lines(name: str) -> list[str]:
        raw = (base / f"realsumm_{name}.txt.gz").read_bytes()
        return gzip.decompress(raw).decode("utf-8").splitlines()

    data = RealSumm(lines("src"), lines("ref"), {s: lines(s) for s in REALSUMM_SYSTEMS})
    sizes = {len(data.sources), len(data.references), *(len(v) for v in data.systems.values())}
    if len(sizes) != 1:
        raise ValueError(f"REALSumm files under {base} are not aligned: sizes {sorted(sizes)}")
    return data
