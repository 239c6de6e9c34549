"""``llmops eval run SUITE`` and ``llmops eval suites``: suites against a running platform."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from evals.suite import SuiteError, load_suite, shipped_suites

DEFAULT_URL = "http://127.0.0.1:8000/v1"


def add_run_parsers(sub: Any, positive_int: Any) -> None:
    s = sub.add_parser("suites", help="list the shipped evaluation suites")
    s.set_defaults(func=cmd_suites)

    r = sub.add_parser(
        "run",
        help="run an evaluation suite against the platform (or any OpenAI-compatible URL)",
        description="Send every item of SUITE to MODEL, score it, and write report.json and junit.xml "
        "to --out. Responses are cached there by request hash: an interrupted run resumes, and a "
        "re-run with the same suite and model sends nothing. Exit status: 0 passed, 1 the gate "
        "failed (with --fail-on-regression), 2 bad usage.",
    )
    r.add_argument("suite", help="a shipped suite (see `llmops eval suites`) or a suite YAML file")
    r.add_argument("--model", required=True, help="the model to evaluate, as clients name it")
    r.add_argument("--url", default=None, help=f"OpenAI-compatible base URL (default: {DEFAULT_URL})")
    r.add_argument("--api-key", default=None, help="API key (default: $LLMOPS_API_KEY, else none)")
    r.add_argument("--limit", type=positive_int, help="evaluate N items spread over the dataset")
    r.add_argument("--out", default=None, help="output folder (default: ./eval-runs/SUITE-MODEL)")
    r.add_argument("--baseline", help="an earlier report.json to compare against (paired bootstrap)")
    r.add_argument("--fail-on-regression", action="store_true", help="exit 1 when the gate fails")
    r.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight (8)")
    r.add_argument("--judge-model", help="a served chat model for judge metrics (default: none: unmeasured)")
    r.add_argument("--judge-budget", type=positive_int, help="most judge tokens this run may spend")
    r.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    r.set_defaults(func=cmd_run)


def cmd_suites(args: argparse.Namespace) -> int:
    for s in shipped_suites():
        metrics = ", ".join(m.key for m in s.metrics) or "(its own)"
        print(f"{s.name:12s} {s.kind:9s} {metrics}\n{'':12s} {' '.join(s.description.split())}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        suite = load_suite(args.suite)
        baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    except (SuiteError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if suite.kind == "retrieval":
        print("error: the retrieval suite runs in process: use `llmops eval retrieval`", file=sys.stderr)
        return 2
    if baseline is not None and baseline.get("suite") != suite.name:
        print(
            f"error: --baseline is a report of suite {baseline.get('suite')!r}, not {suite.name!r}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out or f"eval-runs/{suite.name}-{args.model}".replace(":", "_"))
    return asyncio.run(_run(args, suite, baseline, out))


async def _run(args: argparse.Namespace, suite: Any, baseline: dict[str, Any] | None, out: Path) -> int:
    import openai

    from evals.harness import generate, platform_version, score, suite_digest
    from evals.metrics.judge import Judge, TokenBudget
    from evals.report import build_report, gate, write_reports

    url = args.url or DEFAULT_URL
    client = openai.AsyncOpenAI(
        base_url=url, api_key=args.api_key or os.environ.get("LLMOPS_API_KEY") or "none", max_retries=2
    )

    def progress(done: int, total: int) -> None:
        if not args.no_progress and sys.stderr.isatty():
            print(
                f"\r{suite.name}: {done}/{total}",
                end="" if done < total else "\n",
                file=sys.stderr,
                flush=True,
            )

    try:
        card = await _model_card(client, args.model)
        if card is None:
            print(f"error: {url} serves no model {args.model!r} (see GET /v1/models)", file=sys.stderr)
            return 2
        responses = await generate(
            client, suite, args.model, out, limit=args.limit, concurrency=args.concurrency, progress=progress
        )
        judge = (
            Judge(client, args.judge_model, TokenBudget(run_limit=args.judge_budget))
            if args.judge_model
            else None
        )
        rows = await score(suite, responses, limit=args.limit, judge=judge)
    finally:
        await client.close()
    failed = sum(1 for r in responses.values() if r.text is None)
    if failed == len(responses):
        first = next(iter(responses.values())).error if responses else "no items"
        print(f"error: every request failed (first: {first})", file=sys.stderr)
        return 2
    run = {
        "model": args.model,
        "url": url,
        "platform_version": platform_version(),
        **card,
        "suite_digest": suite_digest(suite),
        "limit": args.limit,
        "judge_model": args.judge_model,
    }
    report = build_report(suite, rows, run)
    result = gate(suite, report, baseline)
    paths = write_reports(out, report, result)
    for key, m in report["metrics"].items():
        mean = "unmeasured" if m["mean"] is None else f"{m['mean']:.4f}"
        ci = "" if m["ci_low"] is None else f" (95% CI {m['ci_low']:.4f}..{m['ci_high']:.4f})"
        g = result["metrics"][key]
        verdict = "" if g["passed"] else "  FAILED: " + "; ".join(g["reasons"])
        print(f"{key:12s} {mean}{ci}  n={m['measured']} unmeasured={m['unmeasured']}{verdict}")
    print(f"{len(responses)} items, {failed} failed requests; wrote {', '.join(str(p) for p in paths)}")
    return 1 if args.fail_on_regression and not result["passed"] else 0


async def _model_card(client: Any, model: str) -> dict[str, Any] | None:
    """What the server says it runs under ``model`` (engine, version, config digest, its platform
    version); empty for a server without ``GET /v1/models/{id}``; None when the model is unknown."""
    import openai

    try:
        card = await client.models.retrieve(model)
    except openai.NotFoundError as e:
        body = e.body if isinstance(e.body, dict) else {}
        code = (body.get("error") or body).get("code") if isinstance(body, dict) else None
        return None if code == "model_not_found" else {}
    except openai.APIError:
        return {}
    extra = card.model_extra or {}
    return {
        "engine": extra.get("engine"),
        "model_version": extra.get("version"),
        "config_digest": extra.get("config_digest"),
        "server_platform_version": extra.get("platform_version"),
    }
