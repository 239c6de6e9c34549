"""Guardrail latency: what the default chain adds to a request, on vs off in one run (not a test).

1. **Chain** (in this process): the default input chain of ``configs/local.yaml``
   over 2,000-token prompts (SQuAD paragraphs joined until the MiniLM tokenizer
   counts 2,000 tokens, each prompt different), timed per call of
   :meth:`Guardrails.check_input`, and per check. Also the output chain on a
   150-word answer fed word by word (the stream's per-token cost).
2. **Platform**: the real Serve app with two ``fixed``-engine models that differ only
   in their chain — ``guarded`` (the default chain) and ``plain`` (no checks) —
   requests alternating between them at concurrency 1 through HAProxy:
   unary chat with a 2,000-token prompt (client latency, and the gateway's own
   ``guardrails`` stage from ``Server-Timing``), and streams of 64 words at 10 ms a
   word (client TTFT and total time: the hold-back's cost).

Figures are medians/percentiles over ``--requests`` requests per side; the goal
(the default input chain adds <= 25 ms p95 for a 2k-token prompt) is printed
beside them, never asserted. Results: ``--out``/guardrails-<date>.json.

Usage: python benchmarks/guardrails.py [--requests 200] [--no-platform] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gzip
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import llmops  # noqa: E402, F401  (sets Ray's import-time environment before anything imports ray)

GOAL_P95_MS = 25.0
ANSWER = " ".join(
    f"Step {i}: check the deployment, read the dashboard and write down what changed." for i in range(12)
)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def _summary(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(_pct(ms, 95), 3),
        "p99_ms": round(_pct(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def long_prompts(n: int, tokens: int = 2000) -> list[str]:
    """``n`` different prompts of ~``tokens`` MiniLM tokens, from SQuAD paragraphs."""
    from services.embeddings.encoder import Encoder

    with gzip.open(ROOT / "evals/data/squad/squad2_dev_half.json.gz") as f:
        data = json.loads(f.read())
    paragraphs = [p["context"] for a in data["articles"] for p in a["paragraphs"]]
    enc = Encoder(backend="openvino")
    counts = enc.count_tokens(paragraphs)
    prompts, i = [], 0
    for k in range(n):
        parts, total = [], 0
        while total < tokens:
            parts.append(paragraphs[i % len(paragraphs)])
            total += counts[i % len(paragraphs)]
            i += 1
        # the ticket number makes every prompt a distinct text: the paragraphs cycle, and the
        # classifiers' per-text cache would otherwise answer repeats without encoding them
        prompts.append(
            f"Summarise these notes for the on-call engineer (ticket {k}):\n\n" + "\n\n".join(parts)
        )
    return prompts


def default_chain() -> dict[str, Any]:
    from llmops.config import load_config

    cfg = load_config(str(ROOT / "configs/local.yaml"))
    return cfg.guardrails.default.model_dump()


def bench_chain(requests: int) -> dict[str, Any]:
    from services.errors import ContentPolicyError
    from services.generation.protocol import GenerationChunk
    from services.guardrails.chain import Guardrails
    from services.guardrails.stream import OutputGuard

    chain = default_chain()
    g = Guardrails({"default": chain})
    g.warm_up()
    prompts = long_prompts(requests)
    from services.embeddings.encoder import Encoder

    tokens = Encoder(backend="openvino").count_tokens(prompts[:5])

    async def run() -> dict[str, Any]:
        for p in prompts[:5]:  # warm-up
            await g.check_input("m", [p], decisions=[])
        total: list[float] = []
        per: dict[str, list[float]] = {}
        blocked: dict[str, int] = {}
        for p in prompts:
            decisions: list[Any] = []
            t0 = time.perf_counter()
            with contextlib.suppress(ContentPolicyError):  # a benign prompt blocked: counted below
                await g.check_input("m", [p], decisions=decisions)
            total.append((time.perf_counter() - t0) * 1000)
            for d in decisions:
                per.setdefault(d.check, []).append(d.seconds * 1000)
                if d.result == "blocked":
                    blocked[d.check] = blocked.get(d.check, 0) + 1
        words = ANSWER.split()
        stream_ms: list[float] = []
        for _ in range(max(20, requests // 10)):
            guard = OutputGuard.for_model(g, "m")
            assert guard is not None
            t0 = time.perf_counter()
            for i, w in enumerate(words):
                last = i == len(words) - 1
                await guard.feed(GenerationChunk(0, (" " if i else "") + w, 1, "stop" if last else None))
            stream_ms.append((time.perf_counter() - t0) * 1000 / len(words))
        return {
            "prompt_tokens_sample": tokens,
            "input_chain": _summary(total),
            "benign_prompts_blocked": {"n": len(prompts), **blocked},
            "per_check": {k: _summary(v) for k, v in per.items()},
            "output_chain_per_token": _summary(stream_ms),
            "checks": [c["type"] for c in chain["input"]],
            "output_checks": [c["type"] for c in chain["output"]],
        }

    return asyncio.run(run())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_platform(requests: int) -> dict[str, Any]:
    import httpx

    from llmops.config import validate_config
    from llmops.platform import start_platform, stop_platform

    chain = default_chain()
    fixed = {"engine": "fixed", "text": ANSWER, "context_length": 8192,
             "deployment": {"num_cpus": 0.25, "max_ongoing_requests": 64}}  # fmt: skip
    streaming = {**fixed, "text": " ".join(ANSWER.split()[:64]), "token_interval_s": 0.01}
    cfg = validate_config(
        {
            "gateway": {"port": _free_port()},
            "models": [
                {"name": "guarded", **fixed},
                {"name": "plain", **fixed},
                {"name": "guarded-stream", **streaming},
                {"name": "plain-stream", **streaming},
            ],
            "guardrails": {"default": chain, "models": {"plain": {}, "plain-stream": {}}},
            "ray": {"num_cpus": 4},
        }
    )
    url = start_platform(cfg)
    prompts = long_prompts(requests + 5)
    try:
        client = httpx.Client(base_url=url, timeout=60)
        deadline = time.monotonic() + 180
        while True:
            r = client.post("/v1/chat/completions", json=_body("plain", "hi"))
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        unary: dict[str, list[float]] = {"guarded": [], "plain": []}
        stage: list[float] = []
        blocked_400 = 0
        for i, p in enumerate(prompts):
            for model in ("guarded", "plain"):  # alternate so drift hits both
                t0 = time.perf_counter()
                r = client.post("/v1/chat/completions", json=_body(model, p))
                ms = (time.perf_counter() - t0) * 1000
                if r.status_code == 400 and model == "guarded":
                    blocked_400 += 1  # a false positive on a benign prompt (still timed)
                else:
                    r.raise_for_status()
                if i < 5:
                    continue  # warm-up
                unary[model].append(ms)
                if model == "guarded" and r.status_code == 200:
                    stage.append(_server_timing(r.headers["server-timing"]).get("guardrails", 0.0))
        stream: dict[str, dict[str, list[float]]] = {
            m: {"ttft": [], "total": []} for m in ("guarded-stream", "plain-stream")
        }
        for i in range(min(requests, 60) + 3):
            for model in stream:
                body = {**_body(model, "What changed in the last deploy?"), "stream": True}
                t0 = time.perf_counter()
                ttft = None
                with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    for line in resp.iter_lines():
                        text = line.startswith("data: {") and '"content":"' in line
                        if ttft is None and text and '"content":""' not in line:
                            ttft = (time.perf_counter() - t0) * 1000
                total = (time.perf_counter() - t0) * 1000
                if i >= 3 and ttft is not None:
                    stream[model]["ttft"].append(ttft)
                    stream[model]["total"].append(total)
        g, pl = _summary(unary["guarded"]), _summary(unary["plain"])
        unary_result = {
            "guarded": g,
            "plain": pl,
            "gateway_guardrails_stage": _summary(stage),
            "added_p50_ms": round(g["p50_ms"] - pl["p50_ms"], 3),
            "added_p95_ms": round(g["p95_ms"] - pl["p95_ms"], 3),
            "guarded_blocked_400": blocked_400,
        }
        return {
            "unary_2k_prompt": unary_result,
            "stream_64_words_10ms": {m: {k: _summary(v) for k, v in d.items()} for m, d in stream.items()},
            "holdback": {k: chain[k] for k in ("holdback_tokens", "scan_every_tokens")},
        }
    finally:
        stop_platform()


def _body(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 200}


def _server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--no-platform", action="store_true", help="only the in-process chain")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args()
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count()},
        "goal": f"default input chain adds <= {GOAL_P95_MS} ms p95 for a 2k-token prompt",
        "chain": bench_chain(args.requests),
    }
    c = result["chain"]
    print(f"input chain {c['checks']} on 2k-token prompts: {c['input_chain']}")
    print(f"  benign 2k-token prompts blocked: {c['benign_prompts_blocked']}")
    for name, s in c["per_check"].items():
        print(f"  {name:18s} p50 {s['p50_ms']:7.2f} ms  p95 {s['p95_ms']:7.2f} ms")
    print(f"output chain {c['output_checks']} per streamed token: {c['output_chain_per_token']}")
    if not args.no_platform:
        result["platform"] = bench_platform(args.requests)
        u = result["platform"]["unary_2k_prompt"]
        print(f"platform, unary 2k-token chat: guarded {u['guarded']}\n  plain {u['plain']}")
        print(f"  added p50 {u['added_p50_ms']} ms, p95 {u['added_p95_ms']} ms; gateway stage "
              f"{u['gateway_guardrails_stage']}")  # fmt: skip
        for m, d in result["platform"]["stream_64_words_10ms"].items():
            print(f"  {m}: ttft {d['ttft']}  total {d['total']}")
    out = Path(args.out) / f"guardrails-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
