"""Eval scoring throughput: records scored per second, per metric group (not a test).

Records come from the shipped suites, with answers of realistic length:

* qa: ``--qa-records`` SQuAD 2.0 questions (spread over the suite's 6,078, as
  ``llmops eval --limit`` picks them) with their gold answers and paragraph; each
  answer is drawn (seeded) from: a gold answer as is, a gold answer reworded
  ("The answer is X.", a word dropped, ...), the paragraph's sentence that holds
  it, another sentence of the paragraph, ``unanswerable`` (the suite's no-answer
  phrase, scored as the empty answer as the harness does) or a refusal;
* summarize: the 100 REALSumm articles with their references, each summarised by
  the three shipped systems (BART, T5-base, T5-small): 300 records.

Groups, each timed on its own and all lexical ones together per record:

* lexical: SQuAD EM/F1, ROUGE-1/2/L/Lsum, the checks (exact against every gold
  answer, a regex, json_valid, refusal), scored per record as
  :func:`evals.harness.score_item` does; in this process, and as Ray Data jobs
  (``from_items(records).map_batches(Scorer, ActorPoolStrategy(size=1))``, how the
  continuous eval pipeline scores) of ``--ray-records`` records (a suite's records
  repeated) on a 2-CPU local Ray: the job's rate (actor start included), its
  streaming rate (the actor's pace after its first batch: what a long job sustains) and the
  rate inside the scorer;
* MiniLM: ``answer_relevance`` (question vs answer) and ``context_support``
  (answer sentences vs the paragraph, or the article for summarize) with the
  bundled all-MiniLM-L6-v2 built as the embedding deployment builds it (an
  ``EmbeddingModelConfig``: backend auto = OpenVINO on CPU), one call per suite
  (per system for summarize) at each ``--batch-sizes``; with ``--torch`` on the
  torch backend too, for comparison. ``qa-bypara`` is qa's first records in file
  order (questions grouped by paragraph, ~9 per paragraph): records sharing their
  context, as a RAG model's retrieved passages often are, so that each passage is
  encoded once for all of them.

Every figure is the median of ``--reps`` timed passes after one warm-up pass, the
groups alternating so drift hits all of them; the goals (lexical >= 2,000
records/s, MiniLM >= 100 records/s on the 2-core reference machine) are printed
beside them, never asserted. Results go to ``--out``/evals-<date>.json.

Usage: python benchmarks/evals.py [--reps 5] [--qa-records 2000] [--ray-records 20000] [--no-ray]
       [--minilm-records 512] [--minilm-reps 3] [--batch-sizes 64] [--torch] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import llmops  # noqa: E402, F401  (sets Ray's import-time environment before anything imports ray)
from evals.datasets import REALSUMM_SYSTEMS, load_realsumm  # noqa: E402
from evals.metrics import checks, rouge, semantic, squad  # noqa: E402
from evals.suite import items, load_suite  # noqa: E402

Record = dict[str, Any]
GOALS = {"lexical": 2000.0, "minilm": 100.0}  # records/s on the 2-core reference machine
NO_ANSWER = {squad.normalize_answer("unanswerable")}  # the qa suite's no_answer phrase
PATTERN = r"\b(1[5-9]|20)\d{2}\b"  # a regex check a suite might set: the answer names a year
REFUSALS = (
    "I'm sorry, but I can't answer that from the given context.",
    "I cannot provide an answer to this question.",
)


# -- records -------------------------------------------------------------------------------------
def _reworded(gold: str, rng: random.Random) -> str:
    words = gold.split()
    forms = [f"The answer is {gold}.", f"{gold}, according to the passage", f"It was {gold.lower()}."]
    if len(words) > 1:
        forms += [" ".join(words[1:]), " ".join(words[:-1])]
    return rng.choice(forms)


def qa_records(n: int, seed: int = 0, *, spread: bool = True) -> list[Record]:
    """``n`` qa items with a drawn answer each (see the module docstring), spread over the suite
    or (``spread=False``) the first ``n`` in file order: ~9 questions per paragraph in a row."""
    rng = random.Random(seed)
    suite = load_suite("qa")
    out = []
    for it in items(suite, n) if spread else itertools.islice(items(suite), n):
        sents = rouge.sentences(it.context[0]) or it.context
        r = rng.random()
        if not it.expected:  # unanswerable: most models say so, some answer from the paragraph
            answer = "unanswerable" if r < 0.6 else rng.choice(sents)
        else:
            gold = rng.choice(it.expected)
            holding = [s for s in sents if gold in s]
            if r < 0.3:
                answer = gold
            elif r < 0.55:
                answer = _reworded(gold, rng)
            elif r < 0.8:
                answer = holding[0] if holding else rng.choice(sents)
            elif r < 0.9:
                answer = rng.choice(sents)
            elif r < 0.95:
                answer = "unanswerable"
            else:
                answer = rng.choice(REFUSALS)
        out.append(
            {
                "id": it.id,
                "question": it.input,
                "expected": it.expected,
                "context": it.context,
                "answer": answer,
            }
        )
    return out


def summarize_records() -> list[Record]:
    """The REALSumm articles, each with every shipped system's summary (as the files hold it)."""
    its = list(items(load_suite("summarize")))
    systems = load_realsumm().systems
    return [
        {
            "id": f"{it.id}-{name}",
            "system": name,
            "question": "Summarize the article above in three sentences.",
            "expected": it.expected,
            "context": [it.input],
            "answer": systems[name][i],
        }
        for name in REALSUMM_SYSTEMS
        for i, it in enumerate(its)
    ]


# -- lexical scorers (one record -> its scores, as evals.harness.score_item computes them) -------
def score_squad(r: Record) -> dict[str, float]:
    a = r["answer"]
    em, f1 = squad.score(r["expected"], "" if squad.normalize_answer(a) in NO_ANSWER else a)
    return {"squad_em": float(em), "squad_f1": f1}


def score_rouge(r: Record) -> dict[str, float]:
    if not r["expected"]:
        return {m: math.nan for m in rouge.METRICS}
    return rouge.score(r["expected"][0], r["answer"])


def score_checks(r: Record) -> dict[str, float]:
    a = r["answer"]
    return {
        "exact": max((checks.exact(a, e) for e in r["expected"]), default=math.nan),
        "regex": checks.regex(a, PATTERN),
        "json_valid": checks.json_valid(a),
        "refusal": checks.refusal(a),
    }


def score_all(r: Record) -> dict[str, float]:
    return score_squad(r) | score_rouge(r) | score_checks(r)


LEXICAL: dict[str, Callable[[Record], dict[str, float]]] = {
    "squad EM/F1": score_squad,
    "ROUGE-1/2/L/Lsum": score_rouge,
    "checks (exact, regex, json, refusal)": score_checks,
    "all lexical": score_all,
}


class Scorer:
    """A Ray Data batch scorer: one column per score, plus the seconds spent scoring each row and
    when (wall clock) its batch was done."""

    def __init__(self, group: str) -> None:
        self.fn = LEXICAL[group]
        self.fn({"expected": ["a warm-up"], "answer": "warming up"})  # imports, nltk's stemmer: set-up

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        t = time.perf_counter()
        rows = [
            self.fn({"expected": list(e), "answer": str(a)})
            for e, a in zip(batch["expected"], batch["answer"], strict=True)
        ]
        out = {k: np.array([row[k] for row in rows], dtype=np.float64) for k in rows[0]}
        out["id"] = batch["id"]
        out["score_s"] = np.full(len(rows), (time.perf_counter() - t) / max(len(rows), 1))
        out["done_at"] = np.full(len(rows), time.time())
        return out


# -- timing --------------------------------------------------------------------------------------
def _seconds(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _alternating(cases: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds per case over ``reps`` rounds (each case once per round), after a warm-up."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, fn in cases.items():
            times[k].append(_seconds(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def in_process(suites: dict[str, list[Record]], reps: int) -> list[dict[str, Any]]:
    cases: dict[str, Callable[[], Any]] = {}
    for s, recs in suites.items():
        for g, fn in LEXICAL.items():
            cases[f"{s}|{g}"] = lambda recs=recs, fn=fn: [fn(r) for r in recs]  # type: ignore[misc]
    med = _alternating(cases, reps)
    return [
        {"group": g, "suite": s, "kind": "lexical", "runner": "in-process", "records": len(suites[s]),
         "records_per_s": len(suites[s]) / med[f"{s}|{g}"]}
        for s in suites for g in LEXICAL
    ]  # fmt: skip


def through_ray(
    suites: dict[str, list[Record]], reps: int, size: int, batch_size: int
) -> list[dict[str, Any]]:
    """Each group as a Ray Data job over ``size`` records (a suite's records repeated); per job its
    wall-clock rate (actor start included), its streaming rate (rows the actor finished after its
    first batch, per second until its last: what a long job sustains) and the rate inside the
    scorer."""
    import logging

    import numpy as np
    import ray

    from services.local_ray import start_local_ray

    start_local_ray(num_cpus=2, include_dashboard=False, serve_hardening=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Ray 2.60 takes max_restarts only through the deprecated **ray_remote_args (as pipelines/ingest)
    warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
    rows: list[dict[str, Any]] = []
    try:
        for s, recs in suites.items():
            one = [{"id": r["id"], "expected": r["expected"], "answer": r["answer"]} for r in recs]
            job = (one * math.ceil(size / len(one)))[:size]
            stats: dict[str, list[tuple[float, float]]] = {g: [] for g in LEXICAL}

            def run(
                g: str, job: list[Record] = job, stats: dict[str, list[tuple[float, float]]] = stats
            ) -> None:
                ds = ray.data.from_items(
                    job, override_num_blocks=math.ceil(len(job) / batch_size)
                ).map_batches(
                    Scorer,
                    fn_constructor_args=(g,),
                    batch_size=batch_size,
                    compute=ray.data.ActorPoolStrategy(size=1),
                    num_cpus=1,
                    max_restarts=0,  # as the ingest pipeline: no "args in the object store" error line
                )
                spent, ends = 0.0, []
                for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    spent += float(np.sum(b["score_s"]))
                    ends.append(b["done_at"])
                done = np.sort(np.concatenate(ends))
                if len(done) != len(job):
                    raise RuntimeError(f"Ray Data returned {len(done)} rows for {len(job)} records")
                # the actor's pace once it runs: rows finished after its first batch, per second
                after = done > done[0]
                span = float(done[-1] - done[0])
                stats[g].append((int(after.sum()) / span if span > 0 else math.nan, len(job) / spent))

            med = _alternating({g: lambda g=g: run(g) for g in LEXICAL}, reps)  # type: ignore[misc]
            for g in LEXICAL:
                timed = stats[g][1:]  # without the warm-up job
                rows.append(
                    {"group": g, "suite": s, "kind": "lexical", "runner": "ray-data", "records": len(job),
                     "records_per_s": len(job) / med[g],
                     "records_per_s_streaming": statistics.median(x[0] for x in timed),
                     "records_per_s_in_scorer": statistics.median(x[1] for x in timed)}
                )  # fmt: skip
    finally:
        ray.shutdown()
    return rows


# -- MiniLM --------------------------------------------------------------------------------------
def platform_encoder(backend: str) -> Any:
    """The bundled MiniLM as the embedding deployment builds it from its config."""
    from services.embeddings.config import EmbeddingModelConfig
    from services.embeddings.encoder import Encoder

    cfg = EmbeddingModelConfig(backend=backend)
    return Encoder.from_config(cfg)


Columns = list[tuple[list[Any], ...]]  # per call: questions, answers, contexts


def _relevance(enc: Any, calls: Columns, batch_size: int) -> None:
    for q, a, _ in calls:
        semantic.answer_relevance(enc, q, a, batch_size=batch_size)


def _support(enc: Any, calls: Columns, batch_size: int) -> None:
    for _, a, c in calls:
        semantic.context_support(enc, a, c, batch_size=batch_size)


def minilm(
    suites: dict[str, list[Record]], reps: int, batch_sizes: Sequence[int], backends: Sequence[str]
) -> list[dict[str, Any]]:
    """One call per suite (per system for summarize: the harness scores one model's answers per
    call, so an article is never shared within a call), every ``batch_sizes`` and backend."""
    parts = {s: [recs] for s, recs in suites.items() if s != "summarize"}
    parts["summarize"] = [[r for r in suites["summarize"] if r["system"] == n] for n in REALSUMM_SYSTEMS]
    cases: dict[tuple[str, str, str, int], Callable[[], Any]] = {}
    for backend in backends:
        enc = platform_encoder(backend)
        for s, calls in parts.items():
            cols = [tuple([r[k] for r in p] for k in ("question", "answer", "context")) for p in calls]
            for bs in batch_sizes:
                if s != "summarize":  # a summary's relevance to "summarize this" says nothing
                    cases[(backend, s, "answer_relevance", bs)] = functools.partial(_relevance, enc, cols, bs)
                cases[(backend, s, "context_support", bs)] = functools.partial(_support, enc, cols, bs)
    med = _alternating({"|".join(map(str, k)): fn for k, fn in cases.items()}, reps)
    return [
        {"group": f"{g} ({b}, batch {bs})", "suite": s, "kind": "minilm", "runner": "in-process",
         "records": len(suites[s]), "records_per_s": len(suites[s]) / med[f"{b}|{s}|{g}|{bs}"]}
        for (b, s, g, bs) in cases
    ]  # fmt: skip


# -- report --------------------------------------------------------------------------------------
def _goal(rate: float, kind: str) -> str:
    return "met" if rate >= GOALS[kind] else "MISSED"


def table(rows: list[dict[str, Any]]) -> str:
    ray = {(r["suite"], r["group"]): r for r in rows if r["runner"] == "ray-data"}
    lines = [
        f"{'':55s} {'in process':>17s} | {'Ray Data, rec/s':^38s}",
        f"{'group':44s} {'suite':>10s} {'rec/s':>10s} {'goal':>6s} | "
        f"{'job':>7s} {'streaming':>9s} {'in scorer':>9s} {'goal':>6s}  (streaming vs goal)",
    ]
    for r in rows:
        if r["runner"] != "in-process":
            continue
        line = f"{r['group']:44s} {r['suite']:>10s} {r['records_per_s']:10.0f} {_goal(r['records_per_s'], r['kind']):>6s} |"
        if (x := ray.get((r["suite"], r["group"]))) is not None:
            line += (
                f" {x['records_per_s']:7.0f} {x['records_per_s_streaming']:9.0f} {x['records_per_s_in_scorer']:9.0f} "
                f"{_goal(x['records_per_s_streaming'], 'lexical'):>6s}"
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="timed passes per lexical figure, median reported (5)")
    p.add_argument("--qa-records", type=int, default=2000, help="qa records for the lexical rows (2000)")
    p.add_argument("--ray-records", type=int, default=20000, help="records per Ray Data job (20000)")
    p.add_argument("--ray-batch-size", type=int, default=512, help="records per Ray Data batch (512)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Data rows")
    p.add_argument("--minilm-records", type=int, default=512, help="qa records for the MiniLM rows (512)")
    p.add_argument("--minilm-reps", type=int, default=3, help="timed passes per MiniLM figure (3)")
    p.add_argument("--batch-sizes", default="64", help="encoder batch sizes, comma-separated (64)")
    p.add_argument("--torch", action="store_true", help="MiniLM on the torch backend too (slow: minutes)")
    p.add_argument("--no-minilm", action="store_true", help="skip the MiniLM rows")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where evals-<date>.json goes")
    a = p.parse_args()

    load0 = os.getloadavg()
    summ = summarize_records()
    lexical = {"qa": qa_records(a.qa_records), "summarize": summ}
    rows = in_process(lexical, a.reps)
    if not a.no_ray:
        rows += through_ray(lexical, a.reps, a.ray_records, a.ray_batch_size)
    if not a.no_minilm:
        backends = ["auto", "torch"] if a.torch else ["auto"]
        sizes = [int(x) for x in a.batch_sizes.split(",")]
        sets = {
            "qa": qa_records(a.minilm_records),
            "qa-bypara": qa_records(a.minilm_records, spread=False),  # shared passages: as in RAG
            "summarize": summ,
        }
        rows += minilm(sets, a.minilm_reps, sizes, backends)
    load1 = os.getloadavg()

    print(
        f"machine: {os.cpu_count()} CPUs, 1-min load {load0[0]:.1f} at start, {load1[0]:.1f} at end; "
        f"median of {a.reps} (MiniLM {a.minilm_reps}) passes after a warm-up; goals: lexical >= "
        f"{GOALS['lexical']:,.0f} rec/s, MiniLM >= {GOALS['minilm']:,.0f} rec/s"
    )
    print(table(rows))
    report = {
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/evals.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} cores",
        "load_avg_1m": {"start": round(load0[0], 2), "end": round(load1[0], 2)},
        "reps": {"lexical": a.reps, "minilm": a.minilm_reps},
        "records": {"qa": a.qa_records, "summarize": len(summ), "minilm_qa": a.minilm_records},
        "goals_records_per_s": GOALS,
        "rows": [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"evals-{report['date']}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
