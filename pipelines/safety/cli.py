"""``llmops safety run``: bias and over-/under-refusal suites against a served model.

Sends seeded samples of BBQ, CrowS-Pairs, BOLD, XSTest, AdvBench and DecodingTrust's
toxic prompts to MODEL through the platform's OpenAI API (Ray Data, bounded
concurrency), scores them, and writes report.json, junit.xml and report.html to
OUT/MODEL/VERSION (VERSION: the model card's ``version``). Responses are cached there:
an interrupted run resumes and a re-run sends nothing but one echo probe. With --baseline, every metric
is compared item by item with an earlier report (paired bootstrap 95 % CI). The
results are pushed to the Pushgateway as llmops_safety_* gauges.

Exit status: 0 done and the gate passed; 1 the gate failed (a significant regression
against --baseline, or a threshold); 2 bad usage, unknown model, unreachable server, or
every request failed; 3 reports written but the metrics could not be pushed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmops.config import LLMOpsConfig
    from pipelines.safety.common import Call, Response


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names, got nothing")
    return names


def add_parser(subparsers: Any, load_config: Callable[[str | None], LLMOpsConfig]) -> argparse.ArgumentParser:
    """Add ``safety`` (with ``run``) to the ``llmops`` sub-commands."""
    from pipelines.safety.bold import DEFAULT_DOMAINS, DOMAINS
    from pipelines.safety.run import SUITES

    p = subparsers.add_parser("safety", help="bias and safety suites against a served model (Ray Data)")
    sub = p.add_subparsers(dest="safety_command", required=True)
    r = sub.add_parser(
        "run",
        help="score a served model on BBQ, CrowS-Pairs, BOLD, XSTest, AdvBench and DecodingTrust",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--model", required=True, help="the model to evaluate, as clients name it")
    r.add_argument(
        "--suites",
        type=_names,
        default=SUITES,
        help=f"comma-separated suites (default: all: {','.join(SUITES)})",
    )
    r.add_argument(
        "--limit",
        type=_positive_int,
        help="items per suite, a seeded sample stratified over the suite's groups (default: each "
        "suite's own, sized for minutes on a CPU engine: bbq 240, crows_pairs 180, bold 130, "
        "xstest 90, advbench 50, decodingtrust 60)",
    )
    r.add_argument(
        "--seed", type=int, default=0, help="sampling seed (0); the same seed pairs runs item by item"
    )
    r.add_argument(
        "--out", default="safety-runs", help="output folder; reports go to OUT/MODEL/VERSION (safety-runs)"
    )
    r.add_argument("--baseline", metavar="DIR_OR_REPORT", help="an earlier run's report.json, or its folder")
    r.add_argument(
        "--base-url", help="OpenAI-compatible base URL (default: the config's gateway, http://HOST:PORT/v1)"
    )
    r.add_argument(
        "--api-key-env",
        default="LLMOPS_API_KEY",
        metavar="VAR",
        help="environment variable holding the API key (LLMOPS_API_KEY; unset: no key)",
    )
    r.add_argument("--concurrency", type=_positive_int, default=8, help="requests in flight at most (8)")
    r.add_argument(
        "--bold-domains",
        type=_names,
        help=f"BOLD domains (default: {','.join(DEFAULT_DOMAINS)}; known: {','.join(DOMAINS)})",
    )
    r.add_argument("--timeout", type=float, default=300.0, help="seconds per request (300)")
    r.add_argument(
        "--config", help="YAML config for Ray, the gateway and the Pushgateway (default: $LLMOPS_CONFIG, "
        "./llmops.yaml, built-in defaults)"
    )  # fmt: skip
    r.add_argument("--pushgateway", metavar="URL", help="Pushgateway to push to (default: the config's)")
    r.add_argument("--no-push", action="store_true", help="do not push metrics to the Pushgateway")
    r.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    r.set_defaults(func=lambda args: cmd_safety_run(args, load_config))
    return p


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def model_card(base_url: str, api_key: str, model: str, timeout_s: float) -> dict[str, Any] | None:
    """The server's card for ``model`` (engine, version, ...); ``{}`` when the server has no
    ``GET /v1/models/{id}``; None when it serves no such model.

    Raises:
        ConnectionError: the server cannot be reached.
    """
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=2, timeout=timeout_s)
    try:
        card = client.models.retrieve(model)
    except openai.NotFoundError as e:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body)
        code = err.get("code") if isinstance(err, dict) else None
        return None if code == "model_not_found" else {}
    except openai.APIConnectionError as e:
        raise ConnectionError(f"cannot reach {base_url}: {e}") from e
    except openai.APIError:
        return {}
    finally:
        client.close()
    extra = card.model_extra or {}
    return {
        "engine": extra.get("engine"),
        "model_version": extra.get("version"),
        "config_digest": extra.get("config_digest"),
        "server_platform_version": extra.get("platform_version"),
    }


def cmd_safety_run(args: argparse.Namespace, load_config: Callable[[str | None], LLMOpsConfig]) -> int:
    from pipelines.safety.report import load_baseline
    from pipelines.safety.run import SafetyRun, build_suites

    try:
        config = load_config(args.config)
        build_suites(args.suites, args.bold_domains)  # bad names fail before any request
        baseline = load_baseline(args.baseline) if args.baseline else None
    except (ValueError, OSError) as exc:
        _err(str(exc))
        return 2
    base_url = args.base_url or f"http://{config.gateway.host}:{config.gateway.port}/v1"
    api_key = os.environ.get(args.api_key_env, "")
    push = None if args.no_push else (args.pushgateway or config.monitoring.pushgateway.push_url)
    cfg = SafetyRun(
        model=args.model,
        suites=tuple(args.suites),
        limit=args.limit,
        seed=args.seed,
        out=Path(args.out),
        baseline=baseline,
        base_url=base_url,
        concurrency=args.concurrency,
        bold_domains=args.bold_domains,
        pushgateway=push,
    )
    try:
        card = model_card(base_url, api_key, args.model, args.timeout)
    except ConnectionError as exc:
        _err(str(exc))
        return 2
    if card is None:
        _err(f"{base_url} serves no model {args.model!r} (see GET /v1/models)")
        return 2
    return _run(cfg, card, config, api_key, args)


def _run(cfg: Any, card: dict[str, Any], config: LLMOpsConfig, api_key: str, args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evals.harness import platform_version
    from pipelines.safety.client import send_async, send_with_ray
    from pipelines.safety.run import execute
    from pipelines.safety.toxicity import default_scorers

    def sender(calls: Sequence[Call], on_batch: Callable[[list[Response]], None]) -> None:
        send_with_ray(
            calls,
            config,
            base_url=cfg.base_url,
            api_key=api_key,
            model=cfg.model,
            concurrency=cfg.concurrency,
            timeout_s=args.timeout,
            on_batch=on_batch,
        )

    def probe(call: Call) -> Response:
        return asyncio.run(send_async([call], cfg.base_url, api_key, cfg.model, 1, args.timeout))[0]

    show = not args.no_progress and sys.stderr.isatty()
    columns = (TextColumn("safety requests"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, disable=not show) as bar:
        task = bar.add_task("requests", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            res = execute(
                cfg,
                card,
                sender,
                probe,
                default_scorers(),
                progress=progress,
                platform_version=platform_version(),
            )
        except (ValueError, OSError, RuntimeError) as exc:
            _err(str(exc))
            return 2
    report, result = res.report, res.gate
    if res.failed and res.failed == report["requests_total"]:
        first = next((r.get("error") for r in report["items"] if r.get("error")), "no items")
        _err(f"every request failed (first: {first}); reports written to {res.out_dir}")
        return 2
    for key, m in report["metrics"].items():
        mean = "unmeasured" if m["mean"] is None else f"{m['mean']:.4f}"
        ci = "" if m["ci_low"] is None else f" (95% CI {m['ci_low']:.4f}..{m['ci_high']:.4f})"
        g = result["metrics"][key]
        verdict = "" if g["passed"] else "  FAILED: " + "; ".join(g["reasons"])
        print(f"{key:28s} {mean}{ci}  n={m['measured']} unmeasured={m['unmeasured']}{verdict}")
    for suite, method in report["methods"].items():
        print(f"method {suite}: {method}")
    for note in res.notes:
        print(f"note: {note}")
    print(
        f"{report['requests_total']} requests ({res.cached} cached, {res.failed} failed) in {res.seconds:.1f}s; "
        f"gate {'passed' if result['passed'] else 'FAILED'}; wrote {', '.join(str(p) for p in res.paths)}"
    )
    if not result["passed"]:
        return 1
    if res.push_error:
        print(f"warning: metrics not pushed to {cfg.pushgateway}: {res.push_error}", file=sys.stderr)
        return 3
    if res.pushed:
        print(f"pushed llmops_safety_* to {cfg.pushgateway}")
    return 0
