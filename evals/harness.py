"""Run a chat suite against an OpenAI-compatible endpoint, then score every item in one pass.

Generation and scoring are separate: :func:`generate` sends each item's messages
(bounded concurrency, the official ``openai`` client) and appends each response
to ``<out>/responses.jsonl`` keyed by the request's hash, so an interrupted run
resumes where it stopped and a re-run with the same suite, model and parameters
sends nothing. :func:`score` reads those responses and computes every metric of
the suite per item; a failed request or a metric that cannot be computed is
NaN (unmeasured). Reports are built from the scored items (:mod:`evals.report`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from evals.metrics import checks, rouge, semantic, squad
from evals.metrics.judge import Judge
from evals.suite import Item, MetricSpec, Suite, items, render


def platform_version() -> str:
    try:
        return metadata.version("llmops-platform")
    except metadata.PackageNotFoundError:
        return "unknown"


def request_body(suite: Suite, item: Item, model: str) -> dict[str, Any]:
    return {"model": model, "messages": render(suite, item), **suite.request}


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


def suite_digest(suite: Suite) -> str:
    """What the scores depend on besides the model: the suite's definition."""
    return hashlib.sha256(suite.model_dump_json().encode()).hexdigest()[:16]


@dataclass
class Response:
    id: str
    hash: str
    text: str | None  # None: the request failed
    error: str | None = None
    latency_s: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # extra response fields (citations, context)


def _load_cache(path: Path) -> dict[str, Response]:
    """Responses already on disk, by request hash; a torn last line (a crash) is ignored."""
    out: dict[str, Response] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            r = Response(**json.loads(line))
        except (ValueError, TypeError):
            continue
        if r.text is not None:  # failures are retried on the next run
            out[r.hash] = r
    return out


async def generate(
    client: Any,
    suite: Suite,
    model: str,
    out_dir: Path,
    *,
    limit: int | None = None,
    concurrency: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Response]:
    """Responses for every item (cached ones reused), by item id."""
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a CLI run: one tiny call before any request)
    cache_path = out_dir / "responses.jsonl"
    cache = _load_cache(cache_path)
    todo = list(items(suite, limit))
    results: dict[str, Response] = {}
    sem = asyncio.Semaphore(concurrency)
    done = 0
    lock = asyncio.Lock()

    async def one(item: Item) -> None:
        nonlocal done
        body = request_body(suite, item, model)
        h = request_hash(body)
        if h in cache:
            results[item.id] = cache[h]
        else:
            async with sem:
                t0 = time.perf_counter()
                try:
                    resp = await client.chat.completions.create(**body)
                    d = resp.model_dump()
                    r = Response(
                        item.id,
                        h,
                        resp.choices[0].message.content or "",
                        latency_s=time.perf_counter() - t0,
                        usage={k: int(v) for k, v in (d.get("usage") or {}).items() if isinstance(v, int)},
                        raw={k: d[k] for k in ("citations", "context") if d.get(k) is not None},
                    )
                except Exception as e:  # one failed request is one unmeasured item, not a failed run
                    r = Response(item.id, h, None, error=f"{type(e).__name__}: {e}"[:500])
            results[item.id] = r
            async with lock:
                with cache_path.open("a") as f:
                    f.write(json.dumps(r.__dict__) + "\n")
        done += 1
        if progress:
            progress(done, len(todo))

    await asyncio.gather(*(one(i) for i in todo))
    return {i.id: results[i.id] for i in todo}


def _squad(spec: MetricSpec, item: Item, text: str) -> tuple[int, float]:
    no = {squad.normalize_answer(p) for p in spec.no_answer}
    pred = "" if squad.normalize_answer(text) in no else text
    return squad.score(item.expected, pred)


def _citation_hit(item: Item, r: Response) -> float:
    gold = item.record.get("doc_id")
    cites = r.raw.get("citations")
    if gold is None or not cites:
        return math.nan
    return float(any(c.get("doc_id") == gold for c in cites))


def _context_precision(item: Item, r: Response) -> float:
    gold = item.record.get("doc_id")
    cites = r.raw.get("citations")
    if gold is None or not cites:
        return math.nan
    return sum(c.get("doc_id") == gold for c in cites) / len(cites)


def score_item(spec: MetricSpec, item: Item, r: Response) -> float:
    """One metric of one item (no model needed); NaN when unmeasured."""
    text = r.text
    if text is None:
        return math.nan
    name = spec.name
    if name == "squad_em":
        return float(_squad(spec, item, text)[0])
    if name == "squad_f1":
        return _squad(spec, item, text)[1]
    if name == "exact":
        return max((checks.exact(text, e) for e in item.expected), default=math.nan)
    if name == "regex":
        return checks.regex(text, str(spec.pattern))
    if name == "json_valid":
        return checks.json_valid(text, required_keys=spec.required_keys)
    if name == "refusal":
        return checks.refusal(text)
    if name in rouge.METRICS:
        return rouge.score(item.expected[0], text)[name] if item.expected else math.nan
    if name == "citation_hit":
        return _citation_hit(item, r)
    if name == "context_precision":
        return _context_precision(item, r)
    raise ValueError(f"metric {name!r} is scored in batch")


async def score(
    suite: Suite,
    responses: dict[str, Response],
    *,
    limit: int | None = None,
    encoder: Any = None,
    judge: Judge | None = None,
) -> list[dict[str, Any]]:
    """Per-item rows: id, category, the answer, latency, error and one column per metric."""
    its = list(items(suite, limit))
    rows: list[dict[str, Any]] = [
        {
            "id": i.id,
            "category": i.category,
            "input": i.input[:500],
            "answer": responses[i.id].text,
            "error": responses[i.id].error,
            "latency_s": responses[i.id].latency_s,
            "has_answer": bool(i.expected),
        }
        for i in its
    ]
    answers = [responses[i.id].text for i in its]
    for spec in suite.metrics:
        if spec.name == "answer_relevance" or spec.name == "context_support":
            if encoder is None:
                from services.embeddings.encoder import Encoder

                encoder = Encoder(None, "cpu", "auto")
            vals = (
                semantic.answer_relevance(encoder, [i.input for i in its], answers)
                if spec.name == "answer_relevance"
                else semantic.context_support(encoder, answers, [i.context for i in its])
            )
        elif spec.name == "judge":
            if judge is None:
                vals = [math.nan] * len(its)  # no judge model configured: unmeasured
            else:
                recs = [
                    {"input": i.input, "answer": a, "expected": "\n".join(i.expected), "context": i.context}
                    for i, a in zip(its, answers, strict=True)
                ]
                vals = await judge.score(str(spec.rubric), recs)
        else:
            vals = [score_item(spec, i, responses[i.id]) for i in its]
        for row, v in zip(rows, vals, strict=True):
            row[spec.key] = v
    return rows
