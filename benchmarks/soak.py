"""Soak: the real ``llmops up`` at saturation for 10 minutes; errors, memory and descriptors.

Starts ``llmops up`` (a subprocess, as users run it) on the zero-work ``fixed``
engine with the real MiniLM embeddings and an embedded collection, seeds a few
documents, then drives it with ``wrk`` at saturation with a mix of requests
(chat, streamed chat, embeddings, hybrid retrieval), one after the other on
every connection. Every ``--sample`` seconds it reads the RSS and the number of
open file descriptors of every process of the run (found by its run id, as
``llmops up``'s own clean-up finds them). Growth is measured from the end of the
warm-up to the end of the run.

Reported (and written to ``benchmarks/results/soak-<date>.{json,txt}``):
requests, errors (non-2xx and socket errors), and per process the RSS at
warm-up and at the end, growth in %, and file descriptors at warm-up and at the
end. Not a test: nothing here asserts; the targets (0 errors, RSS growth < 5 %,
descriptors flat) are judged by reading the report.

    python benchmarks/soak.py [--duration 600] [--warmup 90] [--connections 16]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import llmops  # noqa: E402, F401  (sets Ray's import-time environment)

CONFIG = {
    "gateway": {"deployment": {"num_cpus": 0.25, "max_ongoing_requests": 256}},
    "embeddings": [
        {
            "name": "all-minilm-l6-v2",
            "max_batch_size": 32,
            "deployment": {"num_cpus": 0.5, "max_ongoing_requests": 128},
        }
    ],
    "models": [
        {"name": "fixed", "engine": "fixed", "deployment": {"num_cpus": 0.25, "max_ongoing_requests": 256}}
    ],
    "retrieval": {"collections": [{"name": "docs", "hybrid": True}], "deployment": {"num_cpus": 0.25}},
    "rag": [],
}
DOCS = [
    {"id": f"doc-{i}", "text": text, "metadata": {"lang": "en"}}
    for i, text in enumerate(
        [
            "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
            "Rollo was the first ruler of Normandy; his descendants became the dukes of Normandy.",
            "Oslo is the capital of Norway. Lima is the capital of Peru.",
            "API keys are rotated with llmops keys create; the old key works until it is removed.",
            "Ray Serve deployments scale replicas with the number of ongoing requests.",
        ]
    )
]
REQUESTS = [
    ("/v1/chat/completions", {"model": "fixed", "messages": [{"role": "user", "content": "Hello there"}]}),
    (
        "/v1/chat/completions",
        {"model": "fixed", "stream": True, "messages": [{"role": "user", "content": "Stream it"}]},
    ),
    ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "Who ruled Normandy?"}),
    ("/v1/retrieve", {"collection": "docs", "query": "Who was the first ruler of Normandy?", "top_k": 3}),
]


def _lua() -> str:
    """wrk script: the requests of REQUESTS in turn, on every connection."""
    lines = ["local reqs = {}"]
    for i, (path, body) in enumerate(REQUESTS, 1):
        lines.append(
            f"reqs[{i}] = wrk.format('POST', {json.dumps(path)}, "
            f"{{['Content-Type'] = 'application/json'}}, {json.dumps(json.dumps(body))})"
        )
    lines += [
        "local n = 0",
        "request = function()",
        "  n = n + 1",
        "  return reqs[(n % #reqs) + 1]",
        "end",
    ]
    return "\n".join(lines) + "\n"


def _run_processes(run_id: str, pid: int) -> list[Any]:
    import psutil

    from llmops.run_record import leftover_processes

    procs = [psutil.Process(pid)]
    for p in leftover_processes(run_id):
        try:
            procs.append(psutil.Process(p.pid))
        except psutil.Error:
            continue
    return procs


def _label(proc: Any) -> str:
    try:
        title = proc.cmdline()[0] if proc.cmdline() else proc.name()
    except Exception:
        title = "?"
    title = title.rsplit("/", 1)[-1]
    return f"{title[:60]} ({proc.pid})"


def _sample(run_id: str, pid: int) -> dict[str, dict[str, int]]:
    import psutil

    out = {}
    for p in _run_processes(run_id, pid):
        try:
            out[_label(p)] = {"rss": p.memory_info().rss, "fds": p.num_fds()}
        except psutil.Error:
            continue
    return out


def _wrk(url: str, connections: int, duration: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_lua())
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{int(duration)}s", "--timeout", "30s", "-s", script, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "wrk": out,
    }


def soak(duration: float, warmup: float, connections: int, sample_s: float) -> dict[str, Any]:
    import httpx

    from llmops.run_record import free_port, read_record

    work = Path(tempfile.mkdtemp(prefix="llmops-soak-"))
    (work / "soak.yaml").write_text(json.dumps(CONFIG))  # JSON is YAML
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LLMOPS_"))}
    env.update(LLMOPS_DATA_DIR=str(work / "data"), LLMOPS_MONITORING__METRICS__EXPORT_PORT=str(free_port()))
    log = (work / "up.log").open("w")
    up = subprocess.Popen(
        [sys.executable, "-m", "llmops.cli", "up", "--config", str(work / "soak.yaml"), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while "Ctrl-C stops everything" not in (work / "up.log").read_text():
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llmops up did not start:\n{(work / 'up.log').read_text()}")
            time.sleep(1)
        record = read_record(work / "data")
        assert record is not None
        httpx.post(
            f"{url}/v1/collections/docs/documents", json={"documents": DOCS}, timeout=120
        ).raise_for_status()
        samples: list[tuple[float, dict[str, dict[str, int]]]] = []
        t0 = time.monotonic()
        done = threading.Event()

        def sampler() -> None:
            while not done.wait(sample_s):
                samples.append((time.monotonic() - t0, _sample(record.run_id, up.pid)))

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        load = _wrk(url, connections, duration)
        done.set()
        thread.join()
        stop_t0 = time.monotonic()
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=60)
        stop_s = time.monotonic() - stop_t0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()
    return _report(load, samples, warmup, duration, connections, stop_s)


def _report(
    load: dict[str, Any], samples: list[tuple[float, dict[str, dict[str, int]]]], warmup: float, duration: float,
    connections: int, stop_s: float,
) -> dict[str, Any]:  # fmt: skip
    after = [(t, s) for t, s in samples if t >= warmup]
    first, last = after[0][1], after[-1][1]
    procs = []
    for name in sorted(set(first) & set(last)):
        rss0, rss1 = first[name]["rss"], last[name]["rss"]
        procs.append(
            {
                "process": name,
                "rss_warm_mb": round(rss0 / 2**20, 1),
                "rss_end_mb": round(rss1 / 2**20, 1),
                "rss_growth_pct": round(100 * (rss1 - rss0) / rss0, 2),
                "fds_warm": first[name]["fds"],
                "fds_end": last[name]["fds"],
                "fds_max": max(s[name]["fds"] for _, s in after if name in s),
            }
        )
    return {
        "date": dt.date.today().isoformat(),
        "command": f"python benchmarks/soak.py --duration {duration:g} --warmup {warmup:g} --connections {connections}",
        "machine": f"{os.cpu_count()} cores",
        "mix": [p for p, _ in REQUESTS],
        "requests": load["requests"],
        "rps": load["rps"],
        "errors": load["non_2xx"] + load["socket_errors"],
        "non_2xx": load["non_2xx"],
        "socket_errors": load["socket_errors"],
        "processes": procs,
        "processes_gone_or_new": sorted(set(first) ^ set(last)),
        "max_rss_growth_pct": max(p["rss_growth_pct"] for p in procs),
        "fds_growth": sum(p["fds_end"] - p["fds_warm"] for p in procs),
        "stop_s": round(stop_s, 1),
        "wrk": load["wrk"],
    }


def _text(r: dict[str, Any]) -> str:
    lines = [
        f"soak {r['date']} on {r['machine']}: {r['command']}",
        f"  {r['requests']} requests ({r['rps']:.0f}/s, mix {', '.join(r['mix'])}), errors {r['errors']} "
        f"(non-2xx {r['non_2xx']}, socket {r['socket_errors']})",
        f"  max RSS growth after warm-up {r['max_rss_growth_pct']:+.2f} %, file descriptors {r['fds_growth']:+d} "
        f"in all; Ctrl-C stop took {r['stop_s']} s",
        f"  {'process':<64} {'RSS warm':>9} {'RSS end':>9} {'growth':>8} {'fds':>9}",
    ]
    for p in r["processes"]:
        lines.append(
            f"  {p['process']:<64} {p['rss_warm_mb']:>7.1f}MB {p['rss_end_mb']:>7.1f}MB "
            f"{p['rss_growth_pct']:>+7.2f}% {p['fds_warm']:>4}->{p['fds_end']:<4}"
        )
    if r["processes_gone_or_new"]:
        lines.append(f"  processes that came or went after warm-up: {r['processes_gone_or_new']}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="seconds at saturation (600)")
    p.add_argument("--warmup", type=float, default=90.0, help="seconds before growth is measured (90)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples (10)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where the report goes")
    args = p.parse_args()
    report = soak(args.duration, args.warmup, args.connections, args.sample)
    text = _text(report)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"soak-{report['date']}.json").write_text(json.dumps(report, indent=2))
    (out / f"soak-{report['date']}.txt").write_text(text + "\n\n" + report["wrk"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
