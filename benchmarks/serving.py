"""Serving benchmark: the platform's own overhead, and embedding throughput.

Not a test: prints ratios measured side by side in one run on this machine.

1. Gateway overhead. The full stack (Serve proxy -> llmops gateway: body
   limits, auth, OpenAI parsing -> DeploymentHandle -> generation deployment:
   chat rendering, token count, context check -> the zero-work ``fixed`` engine)
   against a bare Ray Serve app of the same shape (FastAPI ingress ->
   DeploymentHandle -> worker returning fixed text), both deployed at once and
   measured alternately, at 1 and 16 concurrent clients, with ``wrk`` as the
   load generator in its own process. Repeated under each ingress mode Ray 2.60
   offers (Serve's Python proxy; HAProxy ingress; HAProxy + the throughput-
   optimized gRPC data plane, the platform's default), each in a fresh Ray
   cluster because Serve reads these switches at start-up.
2. Embeddings. 32 concurrent single-text requests through the API against raw
   ``SentenceTransformer.encode`` at batch 32 in this process, in texts/s.

Usage: python benchmarks/serving.py [--duration 8] [--modes serve-proxy,haproxy,haproxy+tput]
Needs ``wrk`` (Debian package; ``make bench`` installs it).
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI resolves the annotations here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import llmops  # noqa: E402, F401  (sets Ray's import-time environment before anything imports ray)

# ingress mode -> gateway config (llmops up turns these into Ray Serve's env switches)
MODES: dict[str, dict[str, Any]] = {
    "serve-proxy": {"ingress": "serve-proxy", "throughput_optimized": False},
    "haproxy": {"ingress": "haproxy", "throughput_optimized": False},
    "haproxy+tput": {"ingress": "haproxy", "throughput_optimized": True},
}
FIXED_TEXT = "The quick brown fox jumps over the lazy dog."
CHAT_BODY = {"model": "fixed", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 16}
EMBED_TEXT = "Ray Serve batches concurrent embedding requests into one forward pass."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the bare app --------------------------------------------------------------------------
def bare_app() -> Any:
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="bare-worker", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
    class Worker:
        async def generate(self, body: dict[str, Any]) -> str:
            return FIXED_TEXT

    @serve.deployment(name="bare-ingress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
    @serve.ingress(api)
    class Ingress:
        def __init__(self, worker: Any) -> None:
            self.worker = worker

        @api.post("/v1/chat/completions")
        async def chat(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            text = await self.worker.generate.remote(body)
            return {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": text}}]}

    return Ingress.bind(Worker.bind())


# -- load generation -----------------------------------------------------------------------
def _wrk(url: str, body: dict[str, Any], connections: int, duration: float) -> dict[str, float]:
    """Run wrk (separate process); returns p50/p99 in ms and requests/s."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        script = f.name
    threads = min(connections, 2)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            script,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script)
    if "Non-2xx" in out:
        raise RuntimeError(f"errors under load at {url}:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"cannot parse wrk output:\n{out}")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"p50_ms": ms("50"), "p99_ms": ms("99"), "rps": rps}


def _median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# -- one mode, in its own process (Ray reads the ingress env vars at start) ----------------------
def run_mode(mode: str, duration: float, reps: int, embeddings: bool) -> dict[str, Any]:
    from ray import serve

    from llmops.config import validate_config
    from llmops.platform import start_platform, stop_platform

    port = _free_port()
    cfg = validate_config(
        {
            "gateway": {"port": port, **MODES[mode]},
            # the encoder gets the machine's threads, as the raw encode it is compared with does
            "embeddings": [
                {
                    "name": "minilm",
                    "max_batch_size": 32,
                    "torch_threads": os.cpu_count() or 1,
                    "deployment": {"num_cpus": 0.25, "max_ongoing_requests": 64},
                }
            ],
            "models": [
                {
                    "name": "fixed",
                    "engine": "fixed",
                    "text": FIXED_TEXT,
                    "deployment": {"num_cpus": 0.25, "max_ongoing_requests": 256},
                }
            ],
            "ray": {"num_cpus": 4},
        }
    )
    url = start_platform(cfg)
    try:
        serve.run(bare_app(), name="bare", route_prefix="/bare", blocking=False)
        _wait_200(f"{url}/bare/v1/chat/completions", CHAT_BODY)
        result: dict[str, Any] = {"mode": mode, "overhead": {}}
        targets = {"full": f"{url}/v1/chat/completions", "bare": f"{url}/bare/v1/chat/completions"}
        for conc in (1, 16):
            for t in targets.values():  # warm-up
                _wrk(t, CHAT_BODY, conc, 1)
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
            for _ in range(reps):  # alternate A/B so drift hits both
                for name, t in targets.items():
                    runs[name].append(_wrk(t, CHAT_BODY, conc, duration))
            result["overhead"][conc] = {k: _median_of(v) for k, v in runs.items()}
        if embeddings:
            result["embeddings"] = _embeddings(url, duration)
        return result
    finally:
        stop_platform()


def _wait_200(url: str, body: dict[str, Any], timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, json=body, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} never answered 200")


def _embeddings(url: str, duration: float) -> dict[str, float]:
    import numpy as np

    from services.embeddings.encoder import Encoder

    body = {"model": "minilm", "input": EMBED_TEXT, "encoding_format": "base64"}
    _wrk(f"{url}/v1/embeddings", body, 32, 2)  # warm-up
    api = _wrk(f"{url}/v1/embeddings", body, 32, duration)
    enc = Encoder(None, "cpu")
    batch = [EMBED_TEXT] * 32
    enc.encode(batch, batch_size=32)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        vecs = enc.encode(batch, batch_size=32)
        n += len(vecs)
    raw = n / (time.perf_counter() - t0)
    assert np.isfinite(vecs).all()
    return {"api_texts_per_s": api["rps"], "api_p50_ms": api["p50_ms"], "raw_texts_per_s": raw}


# -- driver --------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement (8)")
    p.add_argument("--reps", type=int, default=2, help="alternating repetitions per target (2)")
    p.add_argument("--modes", default=",".join(MODES), help=f"ingress modes ({','.join(MODES)})")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--_mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._mode:
        res = run_mode(args._mode, args.duration, args.reps, embeddings=True)
        print("RESULT " + json.dumps(res))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    results = []
    for mode in args.modes.split(","):
        print(f"== mode {mode}: starting a fresh Ray cluster ...", flush=True)
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--_mode",
                mode,
                "--duration",
                str(args.duration),
                "--reps",
                str(args.reps),
            ],
            capture_output=True,
            text=True,
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"   mode {mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", flush=True)
            results.append({"mode": mode, "error": (proc.stderr or proc.stdout)[-500:]})
            continue
        results.append(json.loads(line[7:]))
        _print_mode(results[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _print_mode(r: dict[str, Any]) -> None:
    print(f"   gateway overhead ({r['mode']}): full stack vs bare Serve app, same run")
    print(
        f"   {'clients':>7} {'bare p50':>9} {'full p50':>9} {'ratio':>6} {'bare p99':>9} {'full p99':>9} {'ratio':>6} {'bare rps':>9} {'full rps':>9}"
    )
    for conc, v in r["overhead"].items():
        b, f = v["bare"], v["full"]
        print(
            f"   {conc:>7} {b['p50_ms']:>7.2f}ms {f['p50_ms']:>7.2f}ms {f['p50_ms'] / b['p50_ms']:>5.2f}x "
            f"{b['p99_ms']:>7.2f}ms {f['p99_ms']:>7.2f}ms {f['p99_ms'] / b['p99_ms']:>5.2f}x {b['rps']:>9.1f} {f['rps']:>9.1f}"
        )
    if "embeddings" in r:
        e = r["embeddings"]
        print(
            f"   embeddings: API (32 concurrent single-text requests) {e['api_texts_per_s']:.0f} texts/s "
            f"vs raw encode at batch 32 {e['raw_texts_per_s']:.0f} texts/s -> {e['api_texts_per_s'] / e['raw_texts_per_s']:.2f}x"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
