"""Build the shipped suites' datasets from the project's own copies of the data.

    python -m evals.suites.build

Deterministic (gzip without a timestamp): re-running writes identical bytes.
Sources and licences: evals/data/squad/ATTRIBUTION.md (SQuAD 2.0, CC BY-SA 4.0)
and evals/data/realsumm/ATTRIBUTION.md (REALSumm, CC BY 4.0).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

from evals.datasets import load_realsumm, load_squad

OUT = Path(__file__).resolve().parent / "data"


def _write(name: str, rows: list[dict[str, Any]]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
    path = OUT / f"{name}.jsonl.gz"
    path.write_bytes(gzip.compress(body, compresslevel=9, mtime=0))
    return path


def qa_rows() -> list[dict[str, Any]]:
    """Every question of the SQuAD 2.0 half set, in file order, with its paragraph."""
    data = load_squad()
    para = {p.doc_id: p for p in data.paragraphs}
    order = {p.doc_id: i for i, p in enumerate(data.paragraphs)}
    qs = sorted(data.questions + data.unanswerable, key=lambda q: (order[q.doc_id], q.qid))
    return [
        {
            "id": q.qid,
            "question": q.text,
            "answers": list(q.answers),  # empty: unanswerable
            "context": para[q.doc_id].text,
            "doc_id": q.doc_id,
            "title": str(para[q.doc_id].metadata["title"]),
        }
        for q in qs
    ]


def rag_rows() -> list[dict[str, Any]]:
    """The answerable questions only, without their paragraph: a RAG model must retrieve it."""
    return [
        {k: r[k] for k in ("id", "question", "answers", "doc_id", "title")} for r in qa_rows() if r["answers"]
    ]


def summarize_rows() -> list[dict[str, Any]]:
    """The 100 REALSumm articles with their reference summaries (tags dropped, text as shipped)."""
    data = load_realsumm()

    def clean(t: str) -> str:
        return " ".join(re.sub(r"</?t>", " ", t).split())

    return [
        {"id": f"realsumm-{i}", "article": clean(src), "reference": ref}
        for i, (src, ref) in enumerate(zip(data.sources, data.references, strict=True))
    ]


def main() -> None:
    for name, rows in (("qa", qa_rows()), ("rag", rag_rows()), ("summarize", summarize_rows())):
        print(f"{_write(name, rows)}: {len(rows)} records")


if __name__ == "__main__":
    main()
