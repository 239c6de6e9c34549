"""A generation replica killed (SIGKILL, by pid) under 8-way load: no request fails.

The `fixed-2` model has two replicas and keeps each request 50 ms in flight, so
the killed replica holds requests when it dies; those are retried once on the
other replica (the request log and the retry counter show it).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import httpx
import openai
import psutil
import pytest

from tests.integration.conftest import FIXED_2, Platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEPLOYMENT = f"ServeReplica:llmops:generation-{FIXED_2}"


def replica_pids() -> list[int]:
    """Live replicas of the deployment, by their process title (``ray::ServeReplica:...``)."""
    pids = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and any(
                a.removeprefix("ray::") == DEPLOYMENT for a in p.cmdline()
            ):
                pids.append(p.pid)
        except psutil.Error:
            continue
    return sorted(pids)


def _wait_replicas(n: int, timeout_s: float = 180) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (pids := replica_pids()) and len(pids) != n and time.monotonic() < deadline:
        time.sleep(0.5)
    return replica_pids()


def _busiest(pids: list[int]) -> int:
    """The replica that spent the most CPU over the last second (under load: it serves requests)."""
    procs = [psutil.Process(pid) for pid in pids]
    start = [sum(p.cpu_times()[:2]) for p in procs]
    time.sleep(1.0)
    used = [sum(p.cpu_times()[:2]) - s0 for p, s0 in zip(procs, start, strict=True)]
    return pids[used.index(max(used))]


def _chat_loop(platform: Platform, stop: threading.Event, stream: bool, outcomes: Counter[str]) -> None:
    client = platform.client()
    body = {"model": FIXED_2, "messages": [{"role": "user", "content": "Hello"}]}
    while not stop.is_set():
        try:
            if stream:
                text = "".join(
                    c.choices[0].delta.content or ""
                    for c in client.chat.completions.create(stream=True, **body)
                    if c.choices
                )  # type: ignore[call-overload]
                outcomes["ok" if text else "empty"] += 1
            else:
                resp = client.chat.completions.create(**body)  # type: ignore[call-overload]
                outcomes["ok" if resp.choices[0].message.content else "empty"] += 1
        except openai.APIStatusError as exc:
            outcomes[f"http {exc.status_code}"] += 1
        except openai.APIError as exc:  # a stream's error event, or a broken connection
            outcomes[type(exc).__name__] += 1


def _retry_counter(platform: Platform, outcomes: set[str]) -> float:
    text = httpx.get(platform.metrics_url, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_llmops_replica_retries_total{")
        and f'model="{FIXED_2}"' in line
        and any(f'outcome="{o}"' in line for o in outcomes)
    )


def test_killing_a_replica_under_load_fails_no_request(platform: Platform) -> None:
    pids = _wait_replicas(2)
    assert len(pids) == 2, pids
    unary: Counter[str] = Counter()
    streams: Counter[str] = Counter()
    stop = threading.Event()
    workers = [threading.Thread(target=_chat_loop, args=(platform, stop, False, unary)) for _ in range(8)]
    workers += [threading.Thread(target=_chat_loop, args=(platform, stop, True, streams)) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 120
        while unary["ok"] < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert unary["ok"] >= 100, unary
        victim = _busiest(pids)  # one that holds requests right now
        before = unary["ok"]
        os.kill(victim, signal.SIGKILL)
        while unary["ok"] < before + 300 and time.monotonic() < deadline + 60:
            time.sleep(0.1)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    assert set(unary) == {"ok"}, unary  # 0 failed non-streamed requests
    assert unary["ok"] >= before + 300, unary
    # streams: retried when nothing was sent yet; one under way may end with a 503 error event, never a 500
    assert not any(k in streams for k in ("http 500", "InternalServerError")), streams
    assert streams["ok"] > 0, streams

    # the killed replica held requests, and the retry saved them: the log and the counter say so
    log = [json.loads(line) for line in platform.request_log.read_text().splitlines() if FIXED_2 in line]
    retried = [r for r in log if r.get("retry")]
    assert retried and {r["retry"] for r in retried} <= {"recovered", "stream_broken"}, retried[:3]
    assert all(r["status"] == 200 for r in retried if r["retry"] == "recovered")
    # counted under the outcomes the log shows (all "stream_broken" when the victim held only streams)
    outcomes = {r["retry"] for r in retried}
    deadline = time.monotonic() + 60
    while _retry_counter(platform, outcomes) < 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert _retry_counter(platform, outcomes) >= 1, (outcomes, len(retried))
    print(f"\nkilled pid {victim}: {dict(unary)} non-streamed, {dict(streams)} streamed; "
          f"{len(retried)} retried ({Counter(r['retry'] for r in retried)})")  # fmt: skip

    # Serve restarts the replica; later tests see two again
    assert len(_wait_replicas(2)) == 2
