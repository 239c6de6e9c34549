"""Rebuild ``squad2_dev_half.json.gz`` from the SQuAD JSON it was cut from.

Run once by a maintainer (``python evals/data/squad/build.py SOURCE.json``); the
project itself only ever reads the compact file next to this script. What the
reduction keeps and drops is described in ``ATTRIBUTION.md``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("squad2_dev_half.json.gz")


def reduce_squad(raw: dict[str, Any]) -> dict[str, Any]:
    """Articles → paragraphs (context) → questions (id, text, answerable, unique answers)."""
    articles = []
    for art in raw["data"]:
        paragraphs = []
        for para in art["paragraphs"]:
            qas = []
            for qa in para["qas"]:
                seen: list[list[Any]] = []
                for ans in qa.get("answers", []):
                    pair = [ans["text"], ans["answer_start"]]
                    if pair not in seen:
                        seen.append(pair)
                qas.append(
                    {
                        "id": qa["id"],
                        "question": qa["question"],
                        "answerable": not qa.get("is_impossible", False),
                        "answers": seen,
                    }
                )
            paragraphs.append({"context": para["context"], "qas": qas})
        articles.append({"title": art["title"], "paragraphs": paragraphs})
    return {"version": raw.get("version", "v2.0"), "articles": articles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("source", help="SQuAD 2.0 JSON (squad2_dev_half.json)")
    args = ap.parse_args()
    blob = Path(args.source).read_bytes()
    data = reduce_squad(json.loads(blob))
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    # mtime=0: the same input gives byte-identical output
    OUT.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    print(f"source sha256 {hashlib.sha256(blob).hexdigest()}; wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
