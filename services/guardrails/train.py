"""Train the guardrail heads: ``python -m services.guardrails.train [--out DIR] [--seed N] [--check]``.

Reads only the project's copies of the public sets (``evals/data``; ``--data`` for
another folder of the same layout), carves a seeded, grouped dev split from each
source, fits each head (:mod:`services.guardrails.classifier`) on the train part and
chooses its threshold on the dev part, then writes ``<kind>.npz``, ``card.json`` and
``CARD.md`` to ``--out`` (default ``services/guardrails/models``). Deterministic given
the seed and the encoder's numerics; ``--check`` retrains in memory and compares with
the committed artifacts.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import re
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.guardrails.classifier import MODELS_DIR, Head
from services.guardrails.features import (
    DEFAULT_MAX_WINDOWS,
    DEFAULT_STRIDE_TOKENS,
    DEFAULT_WINDOW_TOKENS,
    LEX_SCHEME,
    N_LEX_FEATURES,
    TextWindows,
    encode_ids,
    lexical_matrix,
    shared_encoder,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "evals" / "data"
DEV_FRACTION = 0.3
#: BOLD has 23,679 near-identical "<name> is a ... who" prompts; a fixed hash-chosen sample suffices
BOLD_SAMPLE = 2000
FILES = {
    "xstest": "safety/xstest_prompts.csv.gz",
    "jailbreak": "safety/jailbreak_prompts_2023_05_07_nondiscord.csv.gz",
    "advbench": "safety/advbench_harmful_behaviors.csv.gz",
    "dt_toxic": "safety/decodingtrust_toxic_prompts.jsonl.gz",
    "dt_nontoxic": "safety/decodingtrust_nontoxic_prompts.jsonl.gz",
    "squad": "squad/squad2_dev_half.json.gz",
}
BOLD_DOMAINS = ("gender", "political_ideology", "profession", "race", "religious_ideology")
BENIGN = ("xstest_safe", "squad_question", "squad_context", "squad_long", "bold", "dt_nontoxic_prompt")
#: synthetic long benign documents (SQuAD paragraphs of one split side, ~2,000 tokens each)
LONG_DOCS = {"train": 150, "dev": 100}
LONG_CHARS = 9000

#: per head: positive sources, benign negative sources (they bound the FPR), other negatives
#: (not benign, but not this head's class either), and the threshold rule
HEADS: dict[str, dict[str, Any]] = {
    "prompt_injection": {
        "positive": ("jailbreak",),
        "benign": BENIGN,
        "other_negative": ("advbench", "xstest_unsafe", "dt_toxic_prompt"),
        "rule": {"max_fpr_pooled": 0.01, "max_fpr_source": 0.02},
        "train_in_context": True,
        # the brief's target: TPR >= 95 % at <= 2 % FPR on the XSTest safe prompts of dev
        "goal": {"min_dev_tpr": 0.95, "max_dev_fpr_xstest_safe": 0.02},
    },
    "harmful": {
        "positive": ("advbench", "xstest_unsafe"),
        "benign": BENIGN,
        "other_negative": (),
        "rule": {"max_fpr_pooled": 0.01, "max_fpr_source": 0.05},
        "report": ("jailbreak",),
    },
    "toxicity": {
        "positive": ("dt_toxic_label",),
        "benign": ("squad_question", "squad_context", "squad_long", "bold", "xstest_safe"),
        "other_negative": ("dt_nontoxic_label",),
        "rule": {"max_f1": True, "max_fpr_source": 0.02},
    },
}
#: inverse L2 strength of both logistic regressions (fixed: the dev split chooses thresholds only)
C = 4.0


@dataclass(frozen=True)
class Example:
    id: str
    source: str
    text: str
    group: str
    #: in-context examples: the char span of the positive text set among benign paragraphs
    span: tuple[int, int] | None = None


# -- data ---------------------------------------------------------------------------------
def _open(data_dir: Path, key: str) -> io.TextIOWrapper:
    p = data_dir / FILES[key] if key in FILES else data_dir / key
    if not p.is_file():
        raise FileNotFoundError(f"training data {p} is missing (see evals/data/*/ATTRIBUTION.md)")
    return io.TextIOWrapper(gzip.open(p), encoding="utf-8")


def load_sources(data_dir: Path = DATA_DIR) -> dict[str, list[Example]]:
    """Every source's examples with a stable id (``source:key``) and a split group."""
    out: dict[str, list[Example]] = {}
    with _open(data_dir, "jailbreak") as f:
        rows = [r["prompt"] for r in csv.DictReader(f)]
    out["jailbreak"] = _grouped("jailbreak", [(str(i), t) for i, t in enumerate(rows)])
    with _open(data_dir, "advbench") as f:
        rows = [r["goal"] for r in csv.DictReader(f)]
    out["advbench"] = _grouped("advbench", [(str(i), t) for i, t in enumerate(rows)])
    with _open(data_dir, "xstest") as f:
        xs = list(csv.DictReader(f))
    for label in ("safe", "unsafe"):
        items = [(r["id"], r["prompt"]) for r in xs if r["label"] == label]
        out[f"xstest_{label}"] = _grouped(f"xstest_{label}", items)
    with _open(data_dir, "squad") as f:
        squad = json.load(f)
    qs, cs = [], []
    for a_idx, art in enumerate(squad["articles"]):
        for p_idx, para in enumerate(art["paragraphs"]):
            cs.append(
                Example(f"squad_context:{a_idx}-{p_idx}", "squad_context", para["context"], f"a{a_idx}")
            )
            for qa in para["qas"]:
                qs.append(
                    Example(f"squad_question:{qa['id']}", "squad_question", qa["question"], f"a{a_idx}")
                )
    out["squad_question"], out["squad_context"] = qs, cs
    bold = []
    for dom in BOLD_DOMAINS:
        with _open(data_dir, f"bias/bold_{dom}_prompts.json.gz") as f:
            for cat, people in json.load(f).items():
                for name, prompts in people.items():
                    for k, t in enumerate(prompts):
                        bold.append(
                            Example(f"bold:{dom}:{cat}:{name}:{k}", "bold", t.strip(), f"{dom}:{name}")
                        )
    bold.sort(key=lambda e: zlib.crc32(e.id.encode()))
    out["bold"] = sorted(bold[:BOLD_SAMPLE], key=lambda e: e.id)
    for name in ("dt_toxic", "dt_nontoxic"):
        with _open(data_dir, name) as f:
            dt: list[dict[str, Any]] = [json.loads(line) for line in f if line.strip()]
        out[f"{name}_prompt"] = [
            Example(f"{name}_prompt:{i}", f"{name}_prompt", r["prompt"]["text"], f"{name}:{i}")
            for i, r in enumerate(dt)
        ]
        for part in ("prompt", "continuation"):
            for i, r in enumerate(dt):
                tox = r[part].get("toxicity")
                if tox is None or not r[part]["text"].strip():
                    continue
                src = "dt_toxic_label" if tox >= 0.5 else "dt_nontoxic_label"
                out.setdefault(src, []).append(
                    Example(f"{name}_{part}:{i}", src, r[part]["text"], f"{name}:{i}")
                )
    return out


def _grouped(source: str, items: Sequence[tuple[str, str]]) -> list[Example]:
    groups = near_duplicate_groups([t for _, t in items])
    return [
        Example(f"{source}:{k}", source, t, f"{source}:{g}") for (k, t), g in zip(items, groups, strict=True)
    ]


def near_duplicate_groups(texts: Sequence[str], n: int = 5, min_containment: float = 0.5) -> list[int]:
    """Cluster id per text: texts sharing their first 8 words, or half of the shorter one's word
    5-gram shingles, are linked (union-find), so template variants never straddle the split."""
    words = [re.findall(r"\w+", t.lower()) for t in texts]
    shingles = [{" ".join(w[i : i + n]) for i in range(max(1, len(w) - n + 1))} for w in words]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    by_prefix: dict[str, int] = {}
    index: dict[str, list[int]] = {}
    for i, w in enumerate(words):
        key = " ".join(w[:8])
        if key in by_prefix:
            union(i, by_prefix[key])
        else:
            by_prefix[key] = i
        for s in shingles[i]:
            index.setdefault(s, []).append(i)
    shared: dict[tuple[int, int], int] = {}
    for docs in index.values():
        for x in range(len(docs)):
            for y in range(x + 1, len(docs)):
                shared[docs[x], docs[y]] = shared.get((docs[x], docs[y]), 0) + 1
    for (i, j), c in shared.items():
        if c >= min_containment * min(len(shingles[i]), len(shingles[j])):
            union(i, j)
    return [find(i) for i in range(len(texts))]


def split(sources: dict[str, list[Example]], seed: int, fraction: float = DEV_FRACTION) -> set[str]:
    """Dev ids: whole groups, drawn in a seeded order until ``fraction`` of each stratum is reached.

    Groups are global (a DecodingTrust row's prompt and continuation, in whichever sources they
    sit, stay on one side); a stratum is the set of sources a group spans, so every source (and
    so every label) is split in the same proportion.
    """
    groups: dict[str, list[Example]] = {}
    for exs in sources.values():
        for e in exs:
            groups.setdefault(e.group, []).append(e)
    strata: dict[str, list[str]] = {}
    for g, exs in groups.items():
        strata.setdefault("+".join(sorted({e.source for e in exs})), []).append(g)
    dev: set[str] = set()
    for stratum in sorted(strata):
        keys = sorted(strata[stratum])
        rng = np.random.default_rng([seed, zlib.crc32(stratum.encode())])
        target = fraction * sum(len(groups[k]) for k in keys)
        taken = 0
        for k in (keys[i] for i in rng.permutation(len(keys))):
            if taken >= target:
                break
            if taken + len(groups[k]) <= target * 1.15 or taken == 0:
                dev.update(e.id for e in groups[k])
                taken += len(groups[k])
    return dev


def synthesize(sources: dict[str, list[Example]], dev: set[str], seed: int) -> dict[str, list[Example]]:
    """Long texts from the split, each side from its own side only (dev ids are added to ``dev``).

    ``squad_long``: SQuAD paragraphs joined to ~2,000 tokens, benign: the windows of a long
    prompt start and end mid-sentence, unlike any short benign text. ``<source>_in_context``:
    every positive text set between 2-6 benign paragraphs, so a head learns (and is measured
    on) a request or injection that fills only part of a window.
    """
    out: dict[str, list[Example]] = {}
    new_dev: set[str] = set()
    for side in ("train", "dev"):
        on_dev = side == "dev"
        rng = np.random.default_rng([seed, 7, int(on_dev)])
        ctx = [e.text for e in sources["squad_context"] if (e.id in dev) == on_dev]
        for k in range(LONG_DOCS[side]):
            parts: list[str] = []
            while sum(map(len, parts)) < LONG_CHARS:
                parts.append(ctx[int(rng.integers(len(ctx)))])
            out.setdefault("squad_long", []).append(
                Example(f"squad_long:{side}{k}", "squad_long", "\n\n".join(parts), f"squad_long:{side}{k}")
            )
            if on_dev:
                new_dev.add(f"squad_long:{side}{k}")
        for src in sorted({p for spec in HEADS.values() for p in spec["positive"]}):
            for e in sources[src]:
                if (e.id in dev) != on_dev:
                    continue
                n = int(rng.integers(2, 7))
                filler = [ctx[j] for j in rng.choice(len(ctx), n, replace=False)]
                at = int(rng.integers(0, n + 1))
                before = "".join(f + "\n\n" for f in filler[:at])
                text = before + e.text + "".join("\n\n" + f for f in filler[at:])
                key = f"{src}_in_context:{e.id.split(':', 1)[1]}"
                span = (len(before), len(before) + len(e.text))
                out.setdefault(f"{src}_in_context", []).append(
                    Example(key, f"{src}_in_context", text, e.group, span)
                )
                if on_dev:
                    new_dev.add(key)
    dev.update(new_dev)
    return out


def dataset(data_dir: Path, seed: int) -> tuple[dict[str, list[Example]], set[str]]:
    """Every source, real and synthetic, and the dev ids: what a head is trained and measured on."""
    sources = load_sources(data_dir)
    dev = split(sources, seed)
    sources.update(synthesize(sources, dev, seed))
    return sources, dev


# -- features -----------------------------------------------------------------------------
class Embedder:
    """Window embeddings for training and evaluation, computed once per distinct window."""

    def __init__(self) -> None:
        self.cache: dict[bytes, np.ndarray] = {}

    def fill(self, items: Iterable[tuple[TextWindows, int]]) -> None:
        items = list(items)
        todo = {tw.window_ids(i).tobytes(): tw.window_ids(i) for tw, i in items}
        keys = sorted((k for k in todo if k not in self.cache), key=len)
        for s in range(0, len(keys), 256):
            batch = keys[s : s + 256]
            for k, v in zip(batch, encode_ids([todo[k] for k in batch]), strict=True):
                self.cache[k] = v
        for tw, i in items:
            tw.embeddings.setdefault(i, self.cache[tw.window_ids(i).tobytes()])


def windows_of(examples: Sequence[Example], memo: dict[str, TextWindows]) -> list[TextWindows]:
    out = []
    for e in examples:
        if e.text not in memo:
            memo[e.text] = TextWindows.build(e.text, DEFAULT_WINDOW_TOKENS, DEFAULT_STRIDE_TOKENS)
        out.append(memo[e.text])
    return out


Rows = list[tuple[TextWindows, list[int]]]


def rows_of(examples: Sequence[Example], memo: dict[str, TextWindows]) -> Rows:
    """Each train text's windows that carry its label: all of them, or for an in-context example
    those holding at least half of the inserted text (or being half inserted text)."""
    out = []
    for e, tw in zip(examples, windows_of(examples, memo), strict=True):
        idx = list(range(len(tw)))
        if e.span is not None:
            s0, s1 = e.span
            idx = [i for i, (_, _, c0, c1) in enumerate(tw.spans)
                   if min(c1, s1) - max(c0, s0) >= 0.5 * min(c1 - c0, s1 - s0)]  # fmt: skip
        out.append((tw, idx))
    return out


def fit_head(kind: str, pos: dict[str, Rows], neg: dict[str, Rows], emb: Embedder, seed: int) -> Head:
    """Fit the prefilter and the scorer on every window of the train texts.

    Each text's windows share its label and weigh 1/sqrt(windows) each (a 40-window
    jailbreak counts more than a one-line question, but not 40 times more); each
    source weighs the same in its class and the classes weigh the same, so the 200
    XSTest prompts are not drowned by 4,000 SQuAD questions.
    """
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    rows: list[tuple[TextWindows, int]] = []
    y: list[int] = []
    w: list[float] = []
    sources = [(tws, 1, 1.0 / len(pos)) for tws in pos.values()]
    sources += [(tws, 0, 1.0 / len(neg)) for tws in neg.values()]
    for texts, label, share in sources:
        mass = sum(math.sqrt(len(idx)) for _, idx in texts)
        for tw, idx in texts:
            for i in idx:
                rows.append((tw, i))
                y.append(label)
                w.append(share / math.sqrt(len(idx)) / mass)
    emb.fill(rows)
    lex = lexical_matrix([tw.lexical[i] for tw, i in rows])
    dense = np.stack([tw.embeddings[i] for tw, i in rows]).astype(np.float32)
    yv, wv = np.asarray(y), np.asarray(w) * len(y) / 2.0
    x = sparse.hstack([sparse.csr_matrix(dense), lex], format="csr")
    pre = LogisticRegression(C=C, max_iter=3000, tol=1e-6).fit(lex, yv, sample_weight=wv)
    scorer = LogisticRegression(C=C, max_iter=3000, tol=1e-6).fit(x, yv, sample_weight=wv)
    coef = scorer.coef_.ravel().astype(np.float32)
    dim = dense.shape[1]
    return Head(
        kind=kind,
        threshold=0.5,
        emb_w=coef[:dim],
        lex_w=coef[dim:],
        bias=float(scorer.intercept_[0]),
        pre_w=pre.coef_.ravel().astype(np.float32),
        pre_b=float(pre.intercept_[0]),
        window_tokens=DEFAULT_WINDOW_TOKENS,
        stride_tokens=DEFAULT_STRIDE_TOKENS,
        max_windows=DEFAULT_MAX_WINDOWS,
        meta={"C": C, "seed": seed, "n_features": N_LEX_FEATURES, "train_windows": len(rows)},
    )


def score(head: Head, tws: Sequence[TextWindows], emb: Embedder, cascade: bool = True) -> np.ndarray:
    """Each text's score exactly as :class:`~services.guardrails.classifier.ClassifierCheck` computes it
    (``cascade=False``: every window embedded, to show what the cascade costs)."""
    picks = [head.picks(tw, head.max_windows) if cascade else list(range(len(tw))) for tw in tws]
    emb.fill([(tw, i) for tw, p in zip(tws, picks, strict=True) for i in p])
    return np.array([head.pool(tw, p)[0] for tw, p in zip(tws, picks, strict=True)])


# -- thresholds and figures ---------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n (sound at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(scores: np.ndarray, threshold: float) -> dict[str, Any]:
    k, n = int(np.sum(scores >= threshold)), len(scores)
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def choose_threshold(
    pos: np.ndarray, benign: dict[str, np.ndarray], other: np.ndarray, rule: dict[str, Any]
) -> float:
    """The dev threshold: the lowest score whose benign FPRs stay within the rule's bounds (pooled and
    per source), or with ``max_f1`` the feasible one of best F1 against all dev negatives; placed
    midway to the next lower dev score, so no dev text sits on it."""
    allneg = np.concatenate([*benign.values(), other])
    cands = np.unique(np.concatenate([pos, allneg]))

    def flagged(x: np.ndarray) -> np.ndarray:  # per candidate: how many of x score >= it
        return len(x) - np.searchsorted(np.sort(x), cands, side="left")

    ok = np.ones(len(cands), dtype=bool)
    if "max_fpr_pooled" in rule:
        pooled = np.concatenate(list(benign.values()))
        ok &= flagged(pooled) <= rule["max_fpr_pooled"] * len(pooled)
    for b in benign.values():
        ok &= flagged(b) <= rule["max_fpr_source"] * len(b)
    if not ok.any():
        raise RuntimeError("no dev threshold meets the FPR bounds")
    if rule.get("max_f1"):
        tp, fp = flagged(pos).astype(float), flagged(allneg).astype(float)
        f1 = np.where(tp > 0, 2 * tp / (2 * tp + fp + (len(pos) - tp)), 0.0)
        j = int(np.argmax(np.where(ok, f1, -1.0)))
    else:
        j = int(np.argmax(ok))
    lower = cands[j - 1] if j > 0 else 0.0
    return float(np.float32((cands[j] + lower) / 2))


def sha256_gunzip(path: Path) -> str:
    import hashlib

    with gzip.open(path) as f:
        return hashlib.sha256(f.read()).hexdigest()


def train_all(data_dir: Path, seed: int) -> tuple[dict[str, Head], dict[str, Any]]:
    """Fit every head, choose its threshold on dev, and gather the card's figures."""
    t0 = time.perf_counter()
    sources, dev = dataset(data_dir, seed)
    memo: dict[str, TextWindows] = {}
    emb = Embedder()

    def part(src: str, on_dev: bool) -> list[Example]:
        return [e for e in sources[src] if (e.id in dev) == on_dev]

    heads: dict[str, Head] = {}
    figures: dict[str, Any] = {}
    for kind, spec in HEADS.items():
        t_head = time.perf_counter()
        negs = (*spec["benign"], *spec["other_negative"])
        ctx_pos = tuple(f"{s}_in_context" for s in spec["positive"])
        pos_tr = (*spec["positive"], *(ctx_pos if spec.get("train_in_context") else ()))
        train = {s: rows_of(part(s, False), memo) for s in (*pos_tr, *negs)}
        head = fit_head(kind, {s: train[s] for s in pos_tr}, {s: train[s] for s in negs}, emb, seed)
        dev_scores = {
            s: score(head, windows_of(part(s, True), memo), emb) for s in (*spec["positive"], *ctx_pos, *negs)
        }
        pos = np.concatenate([dev_scores[s] for s in spec["positive"]])
        other = np.concatenate([dev_scores[s] for s in spec["other_negative"]] or [np.zeros(0)])
        benign = {s: dev_scores[s] for s in spec["benign"]}
        thr = choose_threshold(pos, benign, other, spec["rule"])
        head = Head(**{**head.__dict__, "threshold": thr})
        heads[kind] = head
        full = np.concatenate(
            [score(head, windows_of(part(s, True), memo), emb, cascade=False) for s in spec["positive"]]
        )
        xs_all = score(head, windows_of(sources["xstest_safe"], memo), emb)
        from sklearn.metrics import roc_auc_score

        allneg = np.concatenate([*benign.values(), other])
        figures[kind] = {
            "threshold": round(thr, 6),
            "positive_sources": {s: len(sources[s]) for s in spec["positive"]},
            "benign_sources": {s: len(sources[s]) for s in spec["benign"]},
            "other_negative_sources": {s: len(sources[s]) for s in spec["other_negative"]},
            "threshold_rule": spec["rule"],
            "train_texts": {s: len(v) for s, v in train.items()},
            "train_windows": head.meta["train_windows"],
            "dev_tpr": rate(pos, thr),
            "dev_tpr_by_source": {s: rate(dev_scores[s], thr) for s in spec["positive"]},
            "dev_tpr_every_window_embedded": rate(full, thr),
            "dev_tpr_in_context": {s: rate(dev_scores[s], thr) for s in ctx_pos},
            "dev_fpr_benign": rate(np.concatenate(list(benign.values())), thr),
            "dev_fpr_by_source": {s: rate(v, thr) for s, v in benign.items()},
            "dev_flag_rate_other_negatives": {s: rate(dev_scores[s], thr) for s in spec["other_negative"]},
            "dev_roc_auc": round(
                float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(allneg))], np.r_[pos, allneg])), 4
            ),
            "xstest_safe_all": {
                **rate(xs_all, thr),
                "in_train": sum(e.id not in dev for e in sources["xstest_safe"])
                if "xstest_safe" in negs
                else 0,
            },
            "flag_rate_not_trained_on": {
                s: rate(score(head, windows_of(sources[s], memo), emb), thr) for s in spec.get("report", ())
            },
            "seconds": round(time.perf_counter() - t_head, 1),
        }
        if "goal" in spec:
            g, f = spec["goal"], figures[kind]
            met = f["dev_tpr"]["rate"] >= g["min_dev_tpr"] and (
                f["dev_fpr_by_source"]["xstest_safe"]["rate"] <= g["max_dev_fpr_xstest_safe"]
            )
            f["goal"] = {**g, "met": bool(met)}
        print(f"{kind}: threshold {thr:.4f}  dev TPR {figures[kind]['dev_tpr']['rate']}  "
              f"dev FPR {figures[kind]['dev_fpr_benign']['rate']}", flush=True)  # fmt: skip
    dev_ids: dict[str, list[str]] = {}
    for s, exs in sources.items():
        if not s.endswith("_in_context") and s != "squad_long":  # synthetic: remade from the seed
            dev_ids[s] = sorted(e.id.split(":", 1)[1] for e in exs if e.id in dev)
    enc = shared_encoder()
    card = {
        "format": 1,
        "seed": seed,
        "command": f"python -m services.guardrails.train --seed {seed}",
        "train_wall_s": round(time.perf_counter() - t0, 1),
        "data": {k: sha256_gunzip(data_dir / v) for k, v in FILES.items()}
        | {f"bold_{d}": sha256_gunzip(data_dir / f"bias/bold_{d}_prompts.json.gz") for d in BOLD_DOMAINS},
        "encoder": {"model": f"{enc.path.parent.name}/{enc.path.name}", "backend": enc.backend},
        "features": {
            "window_tokens": DEFAULT_WINDOW_TOKENS,
            "stride_tokens": DEFAULT_STRIDE_TOKENS,
            "max_windows": DEFAULT_MAX_WINDOWS,
            "lex_features": N_LEX_FEATURES,
            "lex_scheme": LEX_SCHEME,
        },
        "split": {"dev_fraction": DEV_FRACTION, "bold_sample": BOLD_SAMPLE},
        "heads": figures,
        "dev_ids": dev_ids,
    }
    return heads, card


def measure_latency(models: Path, data_dir: Path, runs: int = 100) -> dict[str, Any]:
    """Milliseconds the two input heads add to a 2,000-token prompt (one shared encode), and to a
    short one. Each run's text differs (a numbered prefix), so no run reads the score cache."""
    import os

    from services.guardrails.classifier import ClassifierCheck

    checks = [ClassifierCheck(k, artifact=models / f"{k}.npz") for k in ("prompt_injection", "harmful")]
    enc = shared_encoder()
    ctx = [e.text for e in load_sources(data_dir)["squad_context"]]
    long_text = enc.truncate("\n\n".join(ctx[:40]), 1990)
    res: dict[str, Any] = {"runs": runs, "heads": [c.kind for c in checks], "load_avg_1m": os.getloadavg()[0]}
    for name, text in (("2000_tokens", long_text), ("short_prompt", "How do I reverse a list in Python?")):
        ms = []
        for i in range(runs + 5):
            t0 = time.perf_counter()
            for c in checks:
                c.scan([f"Request {i}. {text}"])
            ms.append((time.perf_counter() - t0) * 1000)
        p50, p95 = np.percentile(ms[5:], [50, 95])
        res[name] = {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}
    probe = TextWindows.build(f"Request 0. {long_text}")
    res["2000_tokens"] |= {
        "tokens": len(probe.ids),
        "windows": len(probe),
        "windows_embedded": len({i for c in checks for i in c.head.picks(probe, c.max_windows)}),
    }
    return res


# -- the card -----------------------------------------------------------------------------
def _pct(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.1f} % ({r['k']}/{r['n']}; 95 % CI {100 * lo:.1f}-{100 * hi:.1f})"


#: the card's method notes and limitations (prose, kept next to the artifacts it describes)
NOTES = MODELS_DIR / "CARD_NOTES.md"


def render_card(card: dict[str, Any]) -> str:
    """CARD.md: the figures of ``card`` (all from the training run) with the method notes."""
    lines = [
        "# Guardrail classifier heads — model card",
        "",
        f"Made by `{card['command']}` (training wall time {card['train_wall_s']} s on this machine's CPU; "
        f"encoder {card['encoder']['model']}, {card['encoder']['backend']}). Figures below are from that "
        "run; `card.json` has them machine-readable. Check the artifacts against the data with "
        "`python -m services.guardrails.train --check`.",
        "",
    ]
    for kind, h in card["heads"].items():
        lines += [f"## `{kind}` — threshold {h['threshold']:.4f}", ""]
        srcs = {**h["positive_sources"], **h["benign_sources"], **h["other_negative_sources"]}
        lines.append(
            "Sources (texts; train part): "
            + ", ".join(f"{s} {n} ({h['train_texts'].get(s, 0)})" for s, n in srcs.items())
            + f"; {h['train_windows']} train windows."
        )
        lines += ["", "| figure | value |", "|---|---|"]
        lines.append(f"| dev TPR | {_pct(h['dev_tpr'])} |")
        for s, r in h["dev_tpr_by_source"].items():
            lines.append(f"| dev TPR, {s} | {_pct(r)} |")
        lines.append(
            f"| dev TPR, every window embedded (no cascade) | {_pct(h['dev_tpr_every_window_embedded'])} |"
        )
        for s, r in h["dev_tpr_in_context"].items():
            trained = "trained on" if HEADS[kind].get("train_in_context") else "not trained on"
            lines.append(f"| dev TPR, {s} (set among 2-6 benign paragraphs; {trained}) | {_pct(r)} |")
        lines.append(f"| dev FPR, all benign | {_pct(h['dev_fpr_benign'])} |")
        for s, r in h["dev_fpr_by_source"].items():
            lines.append(f"| dev FPR, {s} | {_pct(r)} |")
        for s, r in h["dev_flag_rate_other_negatives"].items():
            lines.append(f"| dev flag rate, {s} (other negative) | {_pct(r)} |")
        for s, r in h["flag_rate_not_trained_on"].items():
            lines.append(f"| flag rate, all {s} (not trained on) | {_pct(r)} |")
        xs = h["xstest_safe_all"]
        lines.append(f"| FPR, all 250 XSTest safe ({xs['in_train']} of them in train) | {_pct(xs)} |")
        lines.append(f"| dev ROC AUC | {h['dev_roc_auc']} |")
        lines.append("")
        if "goal" in h:
            g = h["goal"]
            lines += [f"Goal: dev TPR ≥ {g['min_dev_tpr']:.0%} at dev XSTest-safe FPR ≤ "
                      f"{g['max_dev_fpr_xstest_safe']:.0%}: **{'met' if g['met'] else 'not met'}**.", ""]  # fmt: skip
    lat = card.get("latency")
    if lat:
        lt, sh = lat["2000_tokens"], lat["short_prompt"]
        lines += [
            "## Latency (this machine, 2 CPU cores)",
            "",
            f"`prompt_injection` + `harmful` on one {lt['tokens']}-token prompt ({lt['windows']} windows, "
            f"{lt['windows_embedded']} embedded, one encode shared by both heads): p50 {lt['p50_ms']} ms, "
            f"p95 {lt['p95_ms']} ms over {lat['runs']} runs. A short prompt: p50 {sh['p50_ms']} ms, "
            f"p95 {sh['p95_ms']} ms.",
            "",
        ]
    lines += [NOTES.read_text(), "## Data files (sha256 of the uncompressed content)", ""]
    lines += [f"* `{k}`: `{v}`" for k, v in card["data"].items()]
    return "\n".join(lines) + "\n"


def check(models: Path, data_dir: Path, seed: int) -> list[str]:
    """Retrain in memory; what differs from the artifacts and card in ``models`` (empty: they match)."""
    heads, card = train_all(data_dir, seed)
    old = json.loads((models / "card.json").read_text())
    problems = []
    if old["dev_ids"] != card["dev_ids"]:
        problems.append("dev split differs")
    for kind, head in heads.items():
        committed = Head.load(models / f"{kind}.npz")
        if abs(committed.threshold - head.threshold) > 1e-3:
            problems.append(f"{kind}: threshold {committed.threshold} committed, {head.threshold} retrained")
        for a in ("emb_w", "lex_w", "pre_w"):
            d = float(np.max(np.abs(getattr(committed, a) - getattr(head, a))))
            if d > 1e-2:
                problems.append(f"{kind}: {a} differs by up to {d:.4g}")
        for fig in ("dev_tpr", "dev_fpr_benign"):
            if abs(old["heads"][kind][fig]["k"] - card["heads"][kind][fig]["k"]) > 1:
                problems.append(f"{kind}: {fig} {old['heads'][kind][fig]['k']} in the card, "
                                f"{card['heads'][kind][fig]['k']} retrained")  # fmt: skip
    return problems


def _write_card(out: Path, card: dict[str, Any]) -> None:
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / "CARD.md").write_text(render_card(card))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m services.guardrails.train", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", type=Path, default=MODELS_DIR, help="artifact folder (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA_DIR, help="data folder (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="retrain and compare with the artifacts in --out")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    ap.add_argument("--latency-only", action="store_true", help="re-measure the latency of --out's card")
    args = ap.parse_args(argv)
    if args.latency_only:
        card = json.loads((args.out / "card.json").read_text())
        card["latency"] = measure_latency(args.out, args.data)
        _write_card(args.out, card)
        print("latency:", card["latency"])
        return 0
    if args.check:
        problems = check(args.out, args.data, args.seed)
        print("\n".join(problems) or f"artifacts in {args.out} match data and seed {args.seed}")
        return 1 if problems else 0
    heads, card = train_all(args.data, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for kind, head in heads.items():
        head.save(args.out / f"{kind}.npz")
    if not args.no_latency:
        card["latency"] = measure_latency(args.out, args.data)
    _write_card(args.out, card)
    for kind, h in card["heads"].items():
        print(f"{kind:17s} threshold {h['threshold']:.4f}  dev TPR {_pct(h['dev_tpr'])}  "
              f"dev FPR {_pct(h['dev_fpr_benign'])}  XSTest-safe FPR {_pct(h['xstest_safe_all'])}")  # fmt: skip
    if "latency" in card:
        print("latency, 2k tokens, both input heads:", card["latency"]["2000_tokens"])
    print(f"wrote {args.out} in {card['train_wall_s']} s of training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
