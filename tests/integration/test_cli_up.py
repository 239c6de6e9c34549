"""`llmops up` as a user runs it: serves, answers the CLI clients, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _wait_banner(proc: subprocess.Popen[str], lines: list[str], timeout_s: float = 240) -> None:
    """Wait for the start-up banner (printed once /readyz answers 200)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"llmops up exited early with {proc.returncode}: {''.join(lines)}"
        if any("Ctrl-C stops everything" in line for line in lines):
            return
        time.sleep(0.2)
    raise AssertionError(f"llmops up did not become ready: {''.join(lines)}")


def _wait_prometheus_scrapes(port: int, timeout_s: float = 60) -> None:
    """The local Prometheus has the platform's target up and holds llmops samples."""
    deadline = time.monotonic() + timeout_s
    query = f"http://127.0.0.1:{port}/api/v1/query"
    while time.monotonic() < deadline:
        found = [
            httpx.get(query, params={"query": q}, timeout=5).json()["data"]["result"]
            for q in ('up{job="llmops"} == 1', "ray_llmops_build_info")
        ]
        if all(found):
            rules = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).json()["data"]["groups"]
            assert sum(len(g["rules"]) for g in rules) > 10, "the alert rules were not loaded"
            return
        time.sleep(1)
    raise AssertionError("the local Prometheus never scraped the platform")


def _wait_for_sample(url: str, prefix: str, timeout_s: float = 60) -> None:
    """Counters reach Ray's endpoint within a few seconds (buffered, then exported)."""
    deadline = time.monotonic() + timeout_s
    while prefix not in httpx.get(url, timeout=10).text:
        assert time.monotonic() < deadline, f"no {prefix} sample at {url}"
        time.sleep(1)


def _llmops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmops.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_up_serves_then_stops_without_orphans(tmp_path: Path) -> None:
    """Ctrl-C with the local Prometheus; SIGTERM, SIGKILL and the group's Ctrl-C under load
    are in test_cli_hardening.py."""
    sig = signal.SIGINT
    port, metrics_port, prom_port, push_port = free_port(), free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LLMOPS_DATA_DIR": str(tmp_path / "data"),
        "LLMOPS_MONITORING__METRICS__EXPORT_PORT": str(metrics_port),
        "LLMOPS_MONITORING__PROMETHEUS__PORT": str(prom_port),
        "LLMOPS_MONITORING__PUSHGATEWAY__PORT": str(push_port),
    }
    # Ctrl-C also checks the local Prometheus: started, scraping, and stopped with the rest
    extra = ["--with-prometheus"] if sig == signal.SIGINT else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmops.cli",
            "up",
            "--config",
            "configs/local.yaml",
            "--port",
            str(port),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # started the way a shell starts `llmops up &`: with SIGINT ignored, which Python
        # inherits; the Ctrl-C below must stop it all the same
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        _wait_banner(proc, lines)
        assert httpx.get(f"{url}/readyz").status_code == 200
        if sig == signal.SIGINT:  # the CLI clients, once
            models = _llmops("models", "--url", url)
            assert models.returncode == 0, models.stderr
            assert "extractive" in models.stdout and "embedding" in models.stdout
            chat = _llmops(
                "chat",
                "--url",
                url,
                "--system",
                "Oslo is the capital of Norway. Lima is in Peru.",
                "What is the capital of Norway?",
            )
            assert chat.returncode == 0, chat.stderr
            assert chat.stdout.strip().startswith("Oslo is the capital of Norway.")
            banner = "".join(lines)
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            assert f"metrics         {metrics_url}" in banner
            assert f"prometheus      http://127.0.0.1:{prom_port}" in banner, banner
            _wait_prometheus_scrapes(prom_port)
            _wait_for_sample(metrics_url, "ray_llmops_requests_total{")
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in p.name() or "gcs_server" in p.name() for p in tree)
        proc.send_signal(sig)
        proc.wait(timeout=90)
        reader.join(timeout=10)
        out = "".join(lines)
    finally:
        if proc.poll() is None:  # a failed assertion: still shut down cleanly, or Ray's
            proc.send_signal(signal.SIGINT)  # HAProxy (fixed ports) outlives the test
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, out
    assert "llmops is ready" in out and "stopped." in out
    assert "OFF — allowed only because the gateway is bound to loopback" in out
    assert f"curl -s {url}/v1/chat/completions" in out
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree
    ):
        time.sleep(0.5)
    left = [f"{p.pid} {p.name()}" for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"orphaned processes: {left}"
