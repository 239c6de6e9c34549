"""`llmops up` hardened, as a user runs it: the real CLI as a subprocess.

Two platforms side by side (own data_dirs and ports): one on the defaults, one
with a public gateway and auth. What each listens on is read from the kernel
(psutil) for every process of its session; then Ctrl-C to the whole process
group under load, and SIGKILL followed by a new `llmops up` on the same data_dir.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from services.gateway.config import hash_key
from tests.fixtures.llmops_up import ROOT, UpProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = "sk-test-public-gateway-key"
AUTH_ENV = {
    "LLMOPS_AUTH__ENABLED": "true",
    "LLMOPS_AUTH__KEYS": json.dumps([{"tenant": "acme", "sha256": hash_key(KEY)}]),
}
STOP_BOUND_S = 30  # the bound on a stop; a hang, not a speed, is what fails


def _probe_until_ready(up: UpProcess, seen: Counter[str], stop: threading.Event) -> None:
    """What a client gets while the platform starts: refused, 503 or an answer, never a hang."""
    while not stop.is_set():
        try:
            r = httpx.get(f"{up.url}/v1/models", timeout=10)
            seen[str(r.status_code)] += 1
            if r.status_code == 503:
                assert r.headers.get("retry-after") and r.json()["error"]["code"] == "service_unavailable"
        except httpx.ConnectError:
            seen["refused"] += 1
        except httpx.TimeoutException:
            seen["held open"] += 1
        time.sleep(0.2)


def _load(url: str, stop: threading.Event, counts: Counter[str]) -> None:
    bodies = [
        ("/v1/retrieve", {"collection": "docs", "query": "Who ruled Normandy?", "top_k": 3}),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "the Normans in Normandy"}),
        (
            "/v1/chat/completions",
            {
                "model": "extractive",
                "messages": [
                    {"role": "system", "content": "Rollo led the Normans. Paris is in France."},
                    {"role": "user", "content": "Who led the Normans?"},
                ],
            },
        ),
    ]
    with httpx.Client(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            path, body = bodies[i % len(bodies)]
            i += 1
            try:
                counts[str(client.post(path, json=body).status_code)] += 1
            except httpx.HTTPError as exc:
                counts[type(exc).__name__] += 1


def _llmops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmops.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def test_two_platforms_loopback_public_gateway_ctrl_c_under_load_and_sigkill_recovery(tmp_path: Path) -> None:
    default = UpProcess(tmp_path / "a")
    public = UpProcess(tmp_path / "b", "--host", "0.0.0.0", "--log-format", "json", env=AUTH_ENV)
    restarted: UpProcess | None = None
    seen: Counter[str] = Counter()
    stop_probe = threading.Event()
    try:
        default.start()
        public.start()
        probe = threading.Thread(target=_probe_until_ready, args=(default, seen, stop_probe), daemon=True)
        probe.start()
        default.wait_ready()
        public.wait_ready()
        stop_probe.set()
        probe.join(timeout=30)
        assert seen["held open"] == 0, seen
        assert seen["200"] > 0 and (seen["refused"] + seen["503"]) > 0, seen

        # -- 1. loopback by default; only the gateway port public when asked, with auth on
        listeners = default.listeners()
        assert any(s.port == default.port for s in listeners)
        assert [s for s in listeners if not s.loopback] == [], listeners
        public_listeners = public.listeners()
        exposed = [s for s in public_listeners if not s.loopback]
        assert [(s.ip, s.port) for s in exposed] in ([("0.0.0.0", public.port)], [("::", public.port)]), (
            public_listeners
        )
        assert len(public_listeners) > 10  # Ray's own servers are there, all on loopback

        # -- 3. JSON lifecycle lines for log pipelines, flushed while it runs (a pipe, no PYTHONUNBUFFERED)
        events = {line["event"]: line for line in public.json_lines()}
        assert {"starting", "ready"} <= set(events)
        assert events["ready"]["url"] == public.url
        assert "llmops is ready" in default.output  # the text banner arrived before any exit

        # -- 2. a second `llmops up` on a data_dir in use is refused, naming the holder
        second = _llmops("up", "--config", "configs/local.yaml", "--port", "1", env=default.env)
        assert second.returncode == 1
        assert f"already running on data_dir {default.data_dir.resolve()} (pid {default.pid}" in second.stderr

        # -- 5. clients find the platform running on the data_dir (port not in the config)
        models = _llmops("models", env=default.env)
        assert models.returncode == 0, models.stderr
        assert "extractive" in models.stdout
        assert f"using {default.url}: the platform running on {default.data_dir.resolve()}" in models.stderr
        doc = tmp_path / "rollo.txt"
        doc.write_text("Rollo was the first ruler of Normandy.")
        ingest = _llmops("ingest", str(doc), "--collection", "docs", "--no-progress", env=default.env)
        assert ingest.returncode == 0, ingest.stderr
        assert f"submitting through the platform running on {default.data_dir.resolve()}" in ingest.stderr
        assert f"at {default.url} instead" in ingest.stderr

        # -- 2. Ctrl-C to the whole process group, under load: everything stops, in time
        stop_load, counts = threading.Event(), Counter[str]()
        workers = [threading.Thread(target=_load, args=(default.url, stop_load, counts)) for _ in range(12)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 120
        while sum(counts.values()) < 600 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counts["200"] >= 600, counts
        t0 = time.monotonic()
        default.signal_group(signal.SIGINT)
        assert default.exit_code(timeout_s=STOP_BOUND_S) == 0, default.output
        assert default.wait_gone(max(1.0, STOP_BOUND_S - (time.monotonic() - t0))) == []
        stop_load.set()
        for w in workers:
            w.join(timeout=60)
        assert "stopped." in default.output

        # -- 2. SIGKILL (as the OOM killer does) leaves Ray and HAProxy running ...
        public.proc.kill()  # type: ignore[union-attr]
        public.proc.wait(timeout=10)  # type: ignore[union-attr]
        orphans = public.processes()
        assert any(p.name() == "haproxy" for p in orphans), [p.name() for p in orphans]
        # ... and the next `llmops up` on that data_dir cleans up and becomes ready on the same port
        restarted = UpProcess(
            public.data_dir, "--host", "0.0.0.0", env={**AUTH_ENV, **_same_ports(public)}, port=public.port
        )
        restarted.start()
        restarted.wait_ready()
        assert "ended without stopping; stopping what it left behind" in restarted.output
        assert public.wait_gone(10) == []
        r = httpx.get(f"{restarted.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert r.status_code == 200
        restarted.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert restarted.exit_code(timeout_s=STOP_BOUND_S) == 0, restarted.output
        assert restarted.wait_gone(10) == []
    finally:
        stop_probe.set()
        for up in (default, public, restarted):
            if up is not None:
                up.kill_everything()


def _same_ports(up: UpProcess) -> dict[str, str]:
    return {"LLMOPS_MONITORING__METRICS__EXPORT_PORT": str(up.metrics_port)}


def test_unplaceable_deployment_is_reported_not_waited_for(tmp_path: Path) -> None:
    up = UpProcess(
        tmp_path,
        env={
            "LLMOPS_RAY__NUM_CPUS": "2",
            "LLMOPS_MODELS__0__DEPLOYMENT__AUTOSCALING__MIN_REPLICAS": "2",
        },
    )
    try:
        up.start()
        assert up.exit_code(timeout_s=120) == 1, up.output  # not the 600 s ready timeout
        out = up.output
        assert "the deployments cannot all be placed" in out
        assert "gateway (lacks" in out and "Ray has 2 CPU" in out and "ray.num_cpus" in out
        assert up.wait_gone(STOP_BOUND_S) == []
    finally:
        up.kill_everything()


def test_a_taken_port_is_named_with_its_holder(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        up = UpProcess(tmp_path, port=s.getsockname()[1])
        try:
            up.start()
            assert up.exit_code(timeout_s=60) == 1
        finally:
            up.kill_everything()
    assert f"port {up.port} (gateway.port) on 127.0.0.1 is in use by pid " in up.output
    assert "starting llmops" not in up.output  # refused before anything started
