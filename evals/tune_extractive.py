"""Tune the extractive summariser's lead prior on a dev half of REALSumm; report the held-out half.

``python -m evals.tune_extractive [--out FILE]``

REALSumm's 100 articles are split by a hash of their index (``realsumm-<i>``,
even: dev, odd: test). A grid over the prior's weight, decay and the MMR
trade-off is scored on dev only; the configuration with the best mean of
ROUGE-1/2/Lsum on dev is then scored once on the test half, beside LEAD-3 on the
same articles, all with 95 % bootstrap CIs. The chosen values are the
``summary_*`` defaults of the extractive engine's config.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evals.datasets import load_realsumm
from evals.metrics import rouge

METRICS = ("rouge1", "rouge2", "rougeLsum")
GRID = {
    "weight": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0),
    "decay": (2.0, 4.0, 6.0, 8.0, 12.0),
    "lam": (0.75, 1.0),
}


def split() -> tuple[list[int], list[int]]:
    dev = [i for i in range(100) if int(hashlib.sha256(f"realsumm-{i}".encode()).hexdigest(), 16) % 2 == 0]
    return dev, [i for i in range(100) if i not in set(dev)]


def _figures(refs: list[str], preds: list[Any]) -> dict[str, Any]:
    r = rouge.corpus(refs, preds)
    return {
        m: {
            k: round(100 * v, 2)
            for k, v in (("mean", r[m].mean), ("ci_low", r[m].ci_low), ("ci_high", r[m].ci_high))
        }
        for m in METRICS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.tune_extractive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out", default=f"benchmarks/results/extractive-summary-tuning-{time.strftime('%Y-%m-%d')}.json"
    )
    args = parser.parse_args(argv)

    from services.embeddings.encoder import Encoder
    from services.generation.extractive import split_sentences, summary_sentences

    data = load_realsumm()
    encoder = Encoder(None, "cpu", "auto")
    sents = [split_sentences(s) for s in data.sources]
    embs = [np.asarray(encoder.encode(s), dtype=np.float32) for s in sents]
    dev, test = split()

    def summaries(ids: list[int], weight: float, decay: float, lam: float) -> list[list[str]]:
        return [[sents[i][j] for j in summary_sentences(embs[i], 3, weight, decay, lam)] for i in ids]

    def mean3(ids: list[int], *cfg: float) -> float:
        r = rouge.corpus([data.references[i] for i in ids], summaries(ids, *cfg))
        return float(np.mean([r[m].mean for m in METRICS]))

    grid = []
    for weight, decay, lam in itertools.product(*GRID.values()):
        if weight == 0.0 and decay != GRID["decay"][0]:
            continue  # no prior: the decay does nothing
        grid.append(
            {
                "weight": weight,
                "decay": decay,
                "lam": lam,
                "dev_mean": round(100 * mean3(dev, weight, decay, lam), 3),
            }
        )
    best = max(grid, key=lambda g: g["dev_mean"])
    cfg = (best["weight"], best["decay"], best["lam"])
    result: dict[str, Any] = {
        "command": "python -m evals.tune_extractive",
        "split": "REALSumm index i: sha256('realsumm-<i>') even -> dev, odd -> test",
        "dev_articles": len(dev),
        "test_articles": len(test),
        "grid": grid,
        "chosen": {
            "summary_position_weight": cfg[0],
            "summary_position_decay": cfg[1],
            "summary_mmr_lambda": cfg[2],
        },
    }
    for name, ids in (("dev", dev), ("test", test), ("all", list(range(100)))):
        refs = [data.references[i] for i in ids]
        result[name] = {
            "extractive": _figures(refs, summaries(ids, *cfg)),
            "centroid_only": _figures(refs, summaries(ids, 0.0, 1.0, 0.75)),
            "lead3": _figures(refs, [rouge.lead(data.sources[i]) for i in ids]),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name in ("dev", "test", "all"):
        for system in ("extractive", "lead3", "centroid_only"):
            f = result[name][system]
            line = " / ".join(
                f"{f[m]['mean']:.2f} [{f[m]['ci_low']:.2f}, {f[m]['ci_high']:.2f}]" for m in METRICS
            )
            print(f"{name:5s} {system:14s} R-1 / R-2 / R-Lsum: {line}")
    print(f"chosen on dev: {result['chosen']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
