"""A local Prometheus scraping the platform, with the llmops alert rules loaded.

Used by ``llmops up --with-prometheus`` and by the integration test that checks every
dashboard and rule query against real data. It runs Debian's ``prometheus`` binary
(``apt-get install prometheus``) on loopback, with its data under
``<data_dir>/prometheus``; the rules are generated from the config's SLOs, so they
are the same rules ``monitoring/alerts/llmops.yaml`` holds for the default config.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from monitoring.config import MonitoringConfig

__all__ = ["LocalPrometheus", "PrometheusNotInstalledError"]


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the process that started it
    dies, even by SIGKILL, so a killed `llmops up` leaves no Prometheus behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux/glibc: stop() still stops it on every clean exit


class PrometheusNotInstalledError(RuntimeError):
    """The ``prometheus`` executable is not on PATH."""


class LocalPrometheus:
    """One Prometheus process: :meth:`start`, query through :attr:`url`, :meth:`stop`."""

    def __init__(
        self,
        monitoring: MonitoringConfig,
        data_dir: str | Path,
        *,
        metrics_target: str | None = None,
        port: int | None = None,
    ) -> None:
        self.config = monitoring
        # absolute: Prometheus resolves relative rule_files against its config file's folder
        self.dir = Path(data_dir).resolve() / "prometheus"
        self.target = metrics_target or f"127.0.0.1:{monitoring.metrics.export_port}"
        self.host = monitoring.prometheus.host
        self.port = port or monitoring.prometheus.port
        self.url = f"http://{self.host}:{self.port}"
        self.rules_file = self.dir / "llmops-rules.yaml"
        self._proc: subprocess.Popen[bytes] | None = None

    def binary(self) -> str:
        found = shutil.which(self.config.prometheus.binary)
        if found is None:
            raise PrometheusNotInstalledError(
                f"'{self.config.prometheus.binary}' is not installed; on Debian/Ubuntu: "
                "sudo apt-get install prometheus"
            )
        return found

    def write_config(self) -> Path:
        """Write the scrape config and the rules generated from the SLO config."""
        from monitoring.rules import render_rules

        self.dir.mkdir(parents=True, exist_ok=True)
        self.rules_file.write_text(render_rules(self.config))
        interval = f"{self.config.prometheus.scrape_interval_s:g}s"
        scrape: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(self.rules_file)],
            "scrape_configs": [
                {
                    "job_name": self.config.metrics.job,
                    "static_configs": [{"targets": [self.target]}],
                }
            ],
        }
        path = self.dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(scrape, sort_keys=False))
        return path

    def start(self, ready_timeout_s: float = 60.0) -> str:
        """Start Prometheus and wait until it is ready; returns its URL."""
        binary = self.binary()
        config = self.write_config()
        log = (self.dir / "prometheus.log").open("ab")
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--storage.tsdb.retention.time=7d",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with code {self._proc.returncode}; see {self.dir / 'prometheus.log'}"
                )
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prometheus was not ready within {ready_timeout_s:.0f}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query; raises ``RuntimeError`` with Prometheus' message on error."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
