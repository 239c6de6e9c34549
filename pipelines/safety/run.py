"""``llmops safety run``: the suites against one served model, one report per model version.

A run:

1. asks the server what it runs under the model (``GET /v1/models/{id}``: engine,
   ``version``, config digest); the report goes to ``<out>/<model>/<version>/``;
2. loads each suite's seeded sample and its requests; CrowS-Pairs first sends one echo
   request: a 400 ``unsupported_parameter`` (or any 400 naming ``echo``) switches it
   from log-likelihoods to the A/B prompt;
3. sends the requests not in the folder's response cache (``responses.jsonl``, keyed
   by request, model and version: an interrupted run resumes, a re-run sends only the probe)
   on Ray Data with bounded concurrency (:mod:`.client`);
4. scores every suite (sentiment, toxicity, refusal, answer parsing in this process),
   builds the report, gates it against ``--baseline`` and writes report.json,
   junit.xml and report.html (:mod:`.report`);
5. pushes the results to the Pushgateway (:mod:`monitoring.safety_metrics`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.safety.common import Call, Response, SafetySuite, Scorers

SUITES = ("bbq", "crows_pairs", "bold", "xstest", "advbench", "decodingtrust")

#: sends calls and hands back each finished batch (Ray Data in a real run; in-process in tests)
Sender = Callable[[Sequence[Call], Callable[[list[Response]], None]], None]


@dataclass
class SafetyRun:
    """One ``llmops safety run``'s settings (the CLI's flags)."""

    model: str
    suites: tuple[str, ...] = SUITES
    limit: int | None = None
    seed: int = 0
    out: Path = Path("safety-runs")
    baseline: dict[str, Any] | None = None
    base_url: str = "http://127.0.0.1:8000/v1"
    concurrency: int = 8
    bold_domains: tuple[str, ...] | None = None
    pushgateway: str | None = None  # None: do not push
    push_job: str = "llmops-safety"


@dataclass
class RunResult:
    report: dict[str, Any]
    gate: dict[str, Any]
    paths: list[Path]
    out_dir: Path
    sent: int
    cached: int
    failed: int
    pushed: bool = False
    push_error: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def build_suites(names: Sequence[str], bold_domains: Sequence[str] | None = None) -> list[SafetySuite]:
    """The named suites, in the order given.

    Raises:
        ValueError: an unknown suite (named) or a bad option.
    """
    from pipelines.safety.advbench import AdvBench
    from pipelines.safety.bbq import BBQ
    from pipelines.safety.bold import DEFAULT_DOMAINS, Bold
    from pipelines.safety.crows_pairs import CrowsPairs
    from pipelines.safety.decodingtrust import DecodingTrust
    from pipelines.safety.xstest import XSTest

    makers: dict[str, Callable[[], SafetySuite]] = {
        "bbq": BBQ,
        "crows_pairs": CrowsPairs,
        "bold": lambda: Bold(tuple(bold_domains or DEFAULT_DOMAINS)),
        "xstest": XSTest,
        "advbench": AdvBench,
        "decodingtrust": DecodingTrust,
    }
    bad = [n for n in names if n not in makers]
    if bad:
        raise ValueError(f"--suites: unknown suite(s) {bad}; known: {', '.join(SUITES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--suites: a suite is named twice: {list(names)}")
    return [makers[n]() for n in names]


def version_dir(out: Path, model: str, version: str | None) -> Path:
    """``<out>/<model>/<version>``, with characters that are unsafe in a path replaced."""

    def safe(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", s) or "_"

    return out / safe(model) / safe(version or "unversioned")


def echo_refused(r: Response) -> bool:
    """Whether a probe's answer says the engine cannot echo (vs. a transient failure)."""
    if r.text is not None or r.status != 400:
        return False
    return r.code == "unsupported_parameter" or r.param == "echo" or "echo" in (r.error or "")


def _load_cache(path: Path) -> dict[str, Response]:
    """Responses on disk by key; a torn last line (a crash) and failures are skipped."""
    out: dict[str, Response] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            r = Response(**json.loads(line))
        except (ValueError, TypeError):
            continue
        if r.text is not None and r.key:
            out[r.key] = r
    return out


def execute(
    cfg: SafetyRun,
    card: dict[str, Any],
    sender: Sender,
    probe: Callable[[Call], Response],
    scorers: Scorers,
    *,
    progress: Callable[[int, int], None] | None = None,
    platform_version: str = "unknown",
) -> RunResult:
    """Run the suites given the model ``card`` (``engine``, ``model_version``, ...)."""
    from pipelines.safety.crows_pairs import CrowsPairs
    from pipelines.safety.report import assemble, write

    t0 = time.perf_counter()
    version = str(card.get("model_version") or "unversioned")
    out_dir = version_dir(cfg.out, cfg.model, card.get("model_version"))
    out_dir.mkdir(parents=True, exist_ok=True)
    suites = build_suites(cfg.suites, cfg.bold_domains)
    notes: list[str] = []
    for s in suites:
        if isinstance(s, CrowsPairs):
            answer = probe(s.probe())
            if answer.text is None and answer.status == 400 and answer.param == "max_tokens":
                s.echo_max_tokens = 1  # a server that wants a token generated: it is left out
                answer = probe(s.probe())
            if echo_refused(answer):
                s.method = "ab_choice"
                notes.append(
                    f"crows_pairs: the engine refused echo ({answer.error}); used the A/B choice prompt"
                )
            elif answer.text is None:
                raise RuntimeError(f"the CrowS-Pairs echo probe failed: {answer.error}")
    items = {s.name: s.load(cfg.limit or s.default_limit, cfg.seed) for s in suites}
    calls = [c for s in suites for c in s.calls(items[s.name])]
    keys = {c.id: c.key(cfg.model, version) for c in calls}
    cache_path = out_dir / "responses.jsonl"
    cache = _load_cache(cache_path)
    responses: dict[str, Response] = {}
    for c in calls:
        hit = cache.get(keys[c.id])
        if hit is not None:
            responses[c.id] = Response(**{**hit.as_json(), "id": c.id})
    todo = [c for c in calls if c.id not in responses]
    cached = len(responses)
    done = cached
    if progress:
        progress(done, len(calls))

    def on_batch(batch: list[Response]) -> None:
        nonlocal done
        with cache_path.open("a") as f:
            for r in batch:
                r.key = keys[r.id]
                responses[r.id] = r
                f.write(json.dumps(r.as_json()) + "\n")
        done += len(batch)
        if progress:
            progress(done, len(calls))

    sender(todo, on_batch)
    failed = sum(1 for c in calls if responses.get(c.id) is None or responses[c.id].text is None)
    rows = {s.name: s.score(items[s.name], responses, scorers) for s in suites}
    if any(n in cfg.suites for n in ("bold", "decodingtrust")) and scorers.toxicity_note:
        notes.append(scorers.toxicity_note)
    notes.append(
        "refusal (xstest, advbench) is a string-match heuristic on the answer's opening "
        "(XSTest's full-refusal prefixes plus common variants; pipelines/safety/refusal.py)"
    )
    digest = hashlib.sha256(json.dumps(sorted(keys.values())).encode()).hexdigest()[:16]
    run = {
        "model": cfg.model,
        "url": cfg.base_url,
        "platform_version": platform_version,
        **card,
        "suite_digest": digest,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "requests_total": len(calls),
        "requests_failed": failed,
    }
    report, result = assemble(suites, rows, run, cfg.baseline, notes)
    paths = write(out_dir, report, result)
    res = RunResult(report, result, paths, out_dir, len(todo), cached, failed, notes=report["notes"])
    if cfg.pushgateway:
        from monitoring.safety_metrics import push_safety

        try:
            push_safety(report, result, cfg.pushgateway, job=cfg.push_job, finished_at=time.time())
            res.pushed = True
        except OSError as exc:
            res.push_error = f"{type(exc).__name__}: {exc}"
    res.seconds = time.perf_counter() - t0
    return res
