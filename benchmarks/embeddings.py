"""Embedding benchmark: raw encode against the platform's encoder and its Serve deployment.

Not a test: prints ratios measured side by side in one run on this machine (they
never assert on time). Two workloads, the ones issue 9 names:

* single: one short query (~10 words) at a time, p50 latency in ms;
* batch: 32 chunk-sized texts (~200 words, i.e. the model's 256-token window),
  in texts/s. Through Serve these are 32 concurrent one-text requests, so the
  deployment's dynamic batching has to gather them.

Rows:

1. raw: ``SentenceTransformer.encode`` in this process (torch), at 1 thread (what a
   0.5-CPU replica gets: Ray sets ``OMP_NUM_THREADS`` to floor(num_cpus), at least 1)
   and at all of the machine's threads.
2. server: :class:`EmbeddingServer` as the deployment uses it (``check`` +
   ``encode_many``), per backend, in this process at ``--threads``.
3. serve: only the embedding deployment, ``serve.run`` on a loopback Ray cluster,
   called through a DeploymentHandle from this process (the gateway's hop, without
   HTTP), per backend and ``batch_wait_timeout_s``; 0.5 CPU per replica as in
   llmops/local.yaml.

Every measurement is repeated ``--reps`` times, alternating the rows so drift hits
all of them, and the median is printed.

Usage: python benchmarks/embeddings.py [--reps 3] [--duration 6] [--threads 1] [--no-serve]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import llmops  # noqa: E402, F401  (sets Ray's import-time environment before anything imports ray)

QUERY = "how does ray serve batch concurrent embedding requests from many clients"
_WORDS = [
    "the",
    "platform",
    "ingests",
    "documents",
    "splits",
    "them",
    "into",
    "chunks",
    "embeds",
    "each",
    "chunk",
    "and",
    "stores",
    "the",
    "vectors",
    "in",
    "qdrant",
    "so",
    "that",
    "retrieval",
    "can",
    "find",
    "the",
    "relevant",
    "passages",
    "quickly",
    "for",
    "a",
    "question",
]
CHUNKS = [" ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(200)) for i in range(32)]
BACKENDS = ("torch", "openvino")
WAITS = (0.005, 0.0)


def _median_s(fn: Callable[[], Any], n: int) -> float:
    """Median seconds of ``n`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _p50_ms(fn: Callable[[], Any], n: int) -> float:
    return _median_s(fn, n) * 1e3


def _rate(fn: Callable[[], Any], texts: int, n: int) -> float:
    return texts / _median_s(fn, n)


def in_process(reps: int, threads: int) -> dict[str, dict[str, float]]:
    import torch
    from sentence_transformers import SentenceTransformer

    from services.embeddings.deployment import EmbeddingServer
    from services.embeddings.encoder import bundled_model_path

    raw = SentenceTransformer(str(bundled_model_path()), device="cpu", local_files_only=True)
    servers = {b: EmbeddingServer({"backend": b, "torch_threads": threads}) for b in BACKENDS}

    def raw_encode(texts: list[str]) -> Any:
        return raw.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)

    def served(server: EmbeddingServer, callers: list[list[str]]) -> Any:
        for texts in callers:
            server.check(texts)
        return server.encode_many(callers)

    machine = os.cpu_count() or 1
    rows: dict[str, list[tuple[float, float]]] = {}
    for _ in range(reps):
        for th in sorted({1, machine}):
            torch.set_num_threads(th)
            rows.setdefault(f"raw torch, {th} thread(s)", []).append(
                (_p50_ms(lambda: raw_encode([QUERY]), 40), _rate(lambda: raw_encode(CHUNKS), 32, 2))
            )
        torch.set_num_threads(threads)
        for b, s in servers.items():
            rows.setdefault(f"server {b}, {threads} thread(s)", []).append(
                (
                    _p50_ms(lambda s=s: served(s, [[QUERY]]), 40),  # type: ignore[misc]
                    _rate(lambda s=s: served(s, [[c] for c in CHUNKS]), 32, 2),  # type: ignore[misc]
                )
            )
    return {
        k: {"single_ms": statistics.median(r[0] for r in v), "batch_tps": statistics.median(r[1] for r in v)}
        for k, v in rows.items()
    }


async def _serve_single(handle: Any, n: int) -> float:
    await handle.embed.remote([QUERY])
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await handle.embed.remote([QUERY])
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


async def _serve_rate(handle: Any, duration: float) -> float:
    done = 0
    stop = time.perf_counter() + duration

    async def client(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await handle.embed.remote([CHUNKS[i]])
            done += 1

    t = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(len(CHUNKS))))
    return done / (time.perf_counter() - t)


def through_serve(reps: int, duration: float) -> dict[str, dict[str, float]]:
    from ray import serve
    from ray.serve.config import ProxyLocation

    from services.embeddings.deployment import EmbeddingDeployment
    from services.local_ray import start_local_ray

    start_local_ray(num_cpus=4, include_dashboard=False)
    serve.start(proxy_location=ProxyLocation.Disabled)
    handles: dict[str, Any] = {}
    for b in BACKENDS:
        for wait in WAITS:
            name = f"emb-{b}-{wait:g}"
            cfg = {"backend": b, "batch_wait_timeout_s": wait}
            app = EmbeddingDeployment.options(
                name=name, num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=128
            ).bind(cfg)
            handles[f"serve {b}, wait {wait * 1e3:g} ms"] = serve.run(app, name=name, route_prefix=None)

    async def measure() -> dict[str, dict[str, float]]:
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for h in handles.values():  # warm-up
            await _serve_rate(h, 1.0)
        for _ in range(reps):
            for k, h in handles.items():
                single = await _serve_single(h, 40)
                before = len(await h.batch_stats.remote())
                rate = await _serve_rate(h, duration)
                sizes = (await h.batch_stats.remote())[before:]
                rows.setdefault(k, []).append((single, rate, statistics.mean(sizes) if sizes else 0.0))
        return {
            k: {
                "single_ms": statistics.median(r[0] for r in v),
                "batch_tps": statistics.median(r[1] for r in v),
                "mean_batch": statistics.median(r[2] for r in v),
            }
            for k, v in rows.items()
        }

    try:
        return asyncio.run(measure())
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per Serve throughput run")
    ap.add_argument("--threads", type=int, default=1, help="threads of the in-process server rows")
    ap.add_argument("--no-serve", action="store_true", help="skip the Ray Serve rows")
    args = ap.parse_args()

    rows = in_process(args.reps, args.threads)
    if not args.no_serve:
        rows |= through_serve(args.reps, args.duration)
    machine = os.cpu_count() or 1
    ref = rows[f"raw torch, {machine} thread(s)"]
    ref1 = rows["raw torch, 1 thread(s)"]
    print(
        f"machine: {machine} CPUs; single = 1 query of {len(QUERY.split())} words, "
        f"batch = 32 texts of 200 words; ratios against raw torch at {machine} and at 1 thread(s)"
    )
    print(
        f"{'row':34s} {'single p50 ms':>13s} {'x raw':>6s} {'x raw1':>6s} "
        f"{'batch texts/s':>13s} {'x raw':>6s} {'x raw1':>6s} {'texts/pass':>10s}"
    )
    for k, r in rows.items():
        mb = f"{r['mean_batch']:10.1f}" if "mean_batch" in r else ""
        print(
            f"{k:34s} {r['single_ms']:13.2f} {r['single_ms'] / ref['single_ms']:6.2f} "
            f"{r['single_ms'] / ref1['single_ms']:6.2f} {r['batch_tps']:13.1f} "
            f"{r['batch_tps'] / ref['batch_tps']:6.2f} {r['batch_tps'] / ref1['batch_tps']:6.2f} {mb}"
        )
    print("single: 'x raw' is latency / raw latency (lower is better); batch: throughput / raw throughput")


if __name__ == "__main__":
    main()
