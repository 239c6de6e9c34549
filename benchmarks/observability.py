"""Observability overhead: the same platform with metrics, tracing, request log and usage
on, and with all of them off, measured side by side in one run.

Not a test: prints ratios on this machine. Two copies of the serving graph run in one
Ray cluster (each replica is its own process, so each copy keeps its own monitoring
config): ``/on`` with metrics, tracing (every request sampled, spans exported over
OTLP/HTTP to a local sink), the JSON request log and the usage ledger; ``/off`` with
all four off. ``wrk`` (its own process) drives non-streamed chat on the zero-work
``fixed`` engine, so the platform's own cost is all there is to measure (the worst
case: with a real model the same absolute cost is a far smaller share), alternating
A/B in alternating order (ABBA) so drift hits both, at 1 and 16 concurrent clients.

Target: on/off costs at most 3% of throughput and of p50 latency. On a shared 2-core
VM, throughput swings by 10% between identical runs, so it also reports CPU time per
request, summed over every process on the machine (``psutil``) during each run: the
cost the platform actually pays, and far steadier than req/s.

Usage: python benchmarks/observability.py [--duration 8] [--reps 3]
Needs ``wrk`` (Debian package; ``make bench`` installs it).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import llmops  # noqa: E402, F401  (sets Ray's import-time environment before anything imports ray)
from benchmarks.serving import CHAT_BODY, FIXED_TEXT, _free_port, _median_of, _wait_200, _wrk  # noqa: E402

TARGET = 0.03


# variant -> which parts are on; "off" and "on" are the comparison the target is about,
# the others say where the cost comes from
VARIANTS: dict[str, dict[str, bool]] = {
    "off": {"metrics": False, "tracing": False, "log": False, "usage": False},
    "on": {"metrics": True, "tracing": True, "log": True, "usage": True},
    # what `make up` runs: everything but tracing, which is off by default
    "default": {"metrics": True, "tracing": False, "log": True, "usage": True},
    "metrics": {"metrics": True, "tracing": False, "log": False, "usage": False},
    "tracing": {"metrics": False, "tracing": True, "log": False, "usage": False},
    "log+usage": {"metrics": False, "tracing": False, "log": True, "usage": True},
}


def _config(data_dir: str, port: int, parts: dict[str, bool], otlp: str, sampling: float) -> dict[str, Any]:
    return {
        "data_dir": data_dir,
        "gateway": {"port": port},
        "embeddings": [{"name": "minilm", "deployment": {"num_cpus": 0.1}}],
        "models": [
            {
                "name": "fixed",
                "engine": "fixed",
                "text": FIXED_TEXT,
                "deployment": {"num_cpus": 0.25, "max_ongoing_requests": 256},
                "pricing": {"mode": "gpu_hour", "usd_per_gpu_hour": 2.0},
            }
        ],
        "monitoring": {
            "metrics": {"enabled": parts["metrics"], "export_port": _free_port()},
            "tracing": {"enabled": parts["tracing"], "otlp_endpoint": otlp, "sampling_ratio": sampling},
            "request_log": {"enabled": parts["log"]},
        },
        "usage": {"enabled": parts["usage"]},
        "retrieval": {"enabled": False},  # two copies cannot share the embedded store
        "ray": {"num_cpus": 4},
    }


def _cpu_seconds() -> float:
    """User + system CPU of every process on the machine (wrk included: it is the same
    for both variants, per request)."""
    import psutil

    total = 0.0
    for p in psutil.process_iter():
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        total += t.user + t.system
    return total


def run(duration: float, reps: int, variants: list[str], sampling: float) -> dict[str, Any]:
    from ray import serve

    from llmops.config import validate_config
    from llmops.platform import start_platform, stop_platform
    from services.app import build_app
    from tests.fixtures.otlp_sink import OtlpSink

    sink = OtlpSink(parse=False)  # the collector runs elsewhere in production
    data = tempfile.mkdtemp(prefix="llmops-obs-bench-")
    port = _free_port()
    cfgs = {v: validate_config(_config(data, port, VARIANTS[v], sink.endpoint, sampling)) for v in variants}
    # Every measured copy sits under its own prefix: the app at "/" (started with the
    # cluster, and the one whose Ray metrics port is open) is an idle extra, so no
    # variant gets a different place in the ingress or the cluster.
    url = start_platform(cfgs["off"])
    try:
        targets = {}
        for v in variants:
            serve.run(build_app(cfgs[v].services()), name=f"v-{v}", route_prefix=f"/{v}", blocking=False)
            targets[v] = f"{url}/{v}/v1/chat/completions"
        for t in targets.values():
            _wait_200(t, CHAT_BODY)
        result: dict[str, Any] = {"duration_s": duration, "reps": reps, "results": {}}
        for conc in (1, 16):
            for t in targets.values():  # warm-up
                _wrk(t, CHAT_BODY, conc, 1)
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
            for rep in range(reps):
                # A-B then B-A: the VM slows and speeds up over minutes, and a fixed
                # order would charge that drift to whichever variant runs second
                order = list(targets.items())
                for name, t in order if rep % 2 == 0 else reversed(order):
                    before = _cpu_seconds()
                    m = _wrk(t, CHAT_BODY, conc, duration)
                    m["cpu_ms_per_req"] = (_cpu_seconds() - before) * 1000 / max(m["rps"] * duration, 1)
                    runs[name].append(m)
            result["results"][conc] = {k: _median_of(v) for k, v in runs.items()}
        result["otlp_exports"] = sink.requests
        return result
    finally:
        stop_platform()
        sink.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement (8)")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions (3)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--variants",
        default="off,on",
        help=f"comma-separated, must include off and on (all: {','.join(VARIANTS)})",
    )
    p.add_argument("--sampling", type=float, default=1.0, help="tracing sampling ratio when on (1.0)")
    args = p.parse_args()
    variants = args.variants.split(",")
    if not {"off", "on"} <= set(variants) or not set(variants) <= set(VARIANTS):
        p.error(f"--variants must include off and on, from {list(VARIANTS)}")
    r = run(args.duration, args.reps, variants, args.sampling)
    print(
        f"observability on vs off, fixed engine, tracing sampling {args.sampling:g}, "
        f"{args.reps} alternating reps x {args.duration:g}s (medians)"
    )
    print(f"{'clients':>8} {'':>10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}")
    worst = 0.0
    for conc, by in r["results"].items():
        for name in variants:
            m = by[name]
            print(
                f"{conc:>8} {name:>10} {m['rps']:>9.1f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
                f"{m['cpu_ms_per_req']:>11.3f}"
            )
        tput_cost = 1 - by["on"]["rps"] / by["off"]["rps"]
        p50_cost = by["on"]["p50_ms"] / by["off"]["p50_ms"] - 1
        cpu_cost = by["on"]["cpu_ms_per_req"] / by["off"]["cpu_ms_per_req"] - 1
        worst = max(worst, tput_cost, p50_cost)
        print(
            f"{conc:>8} cost: throughput {tput_cost:+.1%}, p50 latency {p50_cost:+.1%}, "
            f"CPU per request {cpu_cost:+.1%}"
        )
        by["throughput_cost"], by["p50_cost"], by["cpu_cost"] = tput_cost, p50_cost, cpu_cost
    print(f"OTLP export requests received during the run: {r['otlp_exports']}")
    verdict = "within" if worst <= TARGET else "OVER"
    print(f"worst cost {worst:+.1%}: {verdict} the {TARGET:.0%} target")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
