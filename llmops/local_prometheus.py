"""A local Prometheus scraping the platform, with the llmops alert rules loaded, and the
Pushgateway batch jobs push to.

Used by ``llmops up --with-prometheus`` and by the integration test that checks every
dashboard and rule query against real data. They run Debian's ``prometheus`` and
``prometheus-pushgateway`` binaries (``make prometheus``) on loopback, with their data
under ``<data_dir>/prometheus`` and ``<data_dir>/pushgateway``; the rules are generated
from the config's SLOs, so they are the same rules ``monitoring/alerts/llmops.yaml`` holds
for the default config. Prometheus scrapes the Pushgateway with ``honor_labels: true``:
pushed series keep their own ``job`` (``monitoring.pushgateway.job``), which the
continuous-evaluation rules select on.
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

__all__ = [
    "PUSHGATEWAY_JOB",
    "LocalPrometheus",
    "LocalPushgateway",
    "PrometheusNotInstalledError",
    "PushgatewayNotInstalledError",
]

#: scrape job of the Pushgateway itself (its own metrics and ``up``); pushed series keep theirs
PUSHGATEWAY_JOB = "pushgateway"


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


class PushgatewayNotInstalledError(RuntimeError):
    """The ``prometheus-pushgateway`` executable is not on PATH."""


def _which(binary: str, package: str, error: type[RuntimeError]) -> str:
    """The path of ``binary``; ``error`` naming the Debian package that has it when it is missing."""
    found = shutil.which(binary)
    if found is None:
        raise error(f"'{binary}' is not installed; on Debian/Ubuntu: sudo apt-get install {package}")
    return found


class _Process:
    """A child server on loopback: started with :func:`_die_with_parent`, ready when
    ``<url>/-/ready`` answers 200, stopped with SIGTERM (then SIGKILL)."""

    name = "process"
    log_name = "process.log"

    def __init__(self, directory: Path, url: str) -> None:
        self.dir, self.url = directory, url
        self._proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], ready_timeout_s: float) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        log_path = self.dir / self.log_name
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self._proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready within {ready_timeout_s:.0f}s")

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


class LocalPushgateway(_Process):
    """One Pushgateway process on ``monitoring.pushgateway.host:port`` (or ``port``).

    Its groups are kept in memory and persisted to ``<data_dir>/pushgateway/metrics.db``
    (every minute and on SIGTERM), so a restarted platform still shows the last
    pushed state instead of nothing.
    """

    name = "prometheus-pushgateway"
    log_name = "pushgateway.log"

    def __init__(
        self, monitoring: MonitoringConfig, data_dir: str | Path, *, port: int | None = None
    ) -> None:
        self.config = monitoring
        self.host = monitoring.pushgateway.host
        self.port = port or monitoring.pushgateway.port
        #: what Prometheus scrapes and batch jobs push to (``push_state(state, url, job)``)
        self.address = f"{self.host}:{self.port}"
        super().__init__(Path(data_dir).resolve() / "pushgateway", f"http://{self.address}")

    def binary(self) -> str:
        return _which(self.config.pushgateway.binary, "prometheus-pushgateway", PushgatewayNotInstalledError)

    def command(self) -> list[str]:
        return [
            self.binary(),
            f"--web.listen-address={self.address}",
            # Debian's default is /var/lib/prometheus/pushgateway.data: keep it under data_dir
            f"--persistence.file={self.dir / 'metrics.db'}",
            "--persistence.interval=1m",
        ]

    def start(self, ready_timeout_s: float = 30.0) -> str:
        """Start the Pushgateway and wait until it is ready; returns its URL."""
        return self._spawn(self.command(), ready_timeout_s)


class LocalPrometheus(_Process):
    """One Prometheus process: :meth:`start`, query through :attr:`url`, :meth:`stop`.

    ``pushgateway`` (``host:port``) adds a scrape job for it with ``honor_labels: true``.
    """

    name = "prometheus"
    log_name = "prometheus.log"

    def __init__(
        self,
        monitoring: MonitoringConfig,
        data_dir: str | Path,
        *,
        metrics_target: str | None = None,
        port: int | None = None,
        pushgateway: str | None = None,
    ) -> None:
        self.config = monitoring
        self.target = metrics_target or f"127.0.0.1:{monitoring.metrics.export_port}"
        self.pushgateway = pushgateway
        self.host = monitoring.prometheus.host
        self.port = port or monitoring.prometheus.port
        # absolute: Prometheus resolves relative rule_files against its config file's folder
        super().__init__(Path(data_dir).resolve() / "prometheus", f"http://{self.host}:{self.port}")
        self.rules_file = self.dir / "llmops-rules.yaml"

    def binary(self) -> str:
        return _which(self.config.prometheus.binary, "prometheus", PrometheusNotInstalledError)

    def write_config(self) -> Path:
        """Write the scrape config and the rules generated from the SLO config."""
        from monitoring.rules import render_rules

        self.dir.mkdir(parents=True, exist_ok=True)
        self.rules_file.write_text(render_rules(self.config))
        interval = f"{self.config.prometheus.scrape_interval_s:g}s"
        jobs: list[dict[str, Any]] = [
            {"job_name": self.config.metrics.job, "static_configs": [{"targets": [self.target]}]}
        ]
        if self.pushgateway:
            # honor_labels: pushed series keep job=<pushgateway.job> (the rules select on
            # it) instead of being relabelled job="pushgateway" by the scrape
            jobs.append(
                {
                    "job_name": PUSHGATEWAY_JOB,
                    "honor_labels": True,
                    "static_configs": [{"targets": [self.pushgateway]}],
                }
            )
        scrape: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(self.rules_file)],
            "scrape_configs": jobs,
        }
        path = self.dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(scrape, sort_keys=False))
        return path

    def start(self, ready_timeout_s: float = 60.0) -> str:
        """Start Prometheus and wait until it is ready; returns its URL."""
        binary = self.binary()
        config = self.write_config()
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--storage.tsdb.retention.time=7d",
        ]
        return self._spawn(argv, ready_timeout_s)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query; raises ``RuntimeError`` with Prometheus' message on error."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
