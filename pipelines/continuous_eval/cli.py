"""``llmops pipeline continuous-eval [--once | --every 5m]``.

Scores what the gateway's inference table gained since the last run (exactly
once: see :mod:`pipelines.continuous_eval.checkpoint`), writes the scores table,
pushes the metrics to the Pushgateway and computes drift. ``--every`` repeats it
until SIGINT/SIGTERM, which stop it once the run under way has finished.

Exit status: 0 done; 2 bad config or input; 3 scored and committed, but the
metrics could not be pushed (they are pushed whole on the next run).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmops.config import LLMOpsConfig

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration(text: str) -> float:
    """``30s``, ``5m``, ``1h``, ``1d`` or plain seconds."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 30s, 5m or 1h, got {text!r}")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def add_parser(subparsers: Any, load_config: Callable[[str | None], LLMOpsConfig]) -> argparse.ArgumentParser:
    """Add ``pipeline`` (with ``continuous-eval``) to the ``llmops`` sub-commands."""
    p = subparsers.add_parser("pipeline", help="batch pipelines on Ray Data (continuous evaluation)")
    sub = p.add_subparsers(dest="pipeline_command", required=True)
    ce = sub.add_parser(
        "continuous-eval",
        help="score sampled live traffic from the inference table into the scores table and Prometheus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    when = ce.add_mutually_exclusive_group()
    when.add_argument(
        "--once", action="store_true", help="one run over everything new, then exit (the default)"
    )
    when.add_argument(
        "--every",
        type=duration,
        metavar="DURATION",
        help="run again every DURATION (e.g. 5m) until SIGINT/SIGTERM",
    )
    ce.add_argument(
        "--config", help="YAML config (default: $LLMOPS_CONFIG, ./llmops.yaml, built-in defaults)"
    )
    ce.add_argument("--no-push", action="store_true", help="do not push metrics to the Pushgateway")
    ce.add_argument("--json", metavar="FILE", help="write the last run's summary (and drift) as JSON to FILE")
    ce.set_defaults(func=lambda args: cmd_continuous_eval(args, load_config))
    return p


def cmd_continuous_eval(args: argparse.Namespace, load_config: Callable[[str | None], LLMOpsConfig]) -> int:
    try:
        config = load_config(args.config)
        if args.no_push:
            config.continuous_eval.push = False
        from pipelines.continuous_eval.pipeline import ContinuousEval

        job = ContinuousEval(config)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    if args.every:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    status = 0
    while True:
        started = time.monotonic()
        try:
            summary = job.run()
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"continuous-eval: {summary.line()}", flush=True)
        for g in summary.drift:
            verdict = g["status"].replace("_", " ")
            p = "n/a" if g["p_value"] is None else f"{g['p_value']:.3f}"
            print(
                f"  drift {g['model']}/{g['tenant']}: {verdict} (reference {g['n_reference']}, current "
                f"{g['n_current']}, MMD² p={p})",
                flush=True,
            )
        status = 0
        if summary.push_error:
            print(f"warning: metrics not pushed: {summary.push_error}", file=sys.stderr)
            status = 3
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(
                    {
                        "files": summary.files,
                        "recovered": summary.recovered,
                        "records": dict(summary.records),
                        "judge_tokens": summary.judge_tokens,
                        "pushed": summary.pushed,
                        "push_error": summary.push_error,
                        "seconds": summary.seconds,
                        "drift": summary.drift,
                    },
                    f,
                    indent=1,
                )
        if not args.every or stop.wait(max(0.0, args.every - (time.monotonic() - started))):
            return status
