"""Per-process observability: the one ``MetricSet`` and tracer provider of a Serve replica.

Every deployment's ``__init__`` calls :func:`observability` with the ``monitoring``
section of the config. The first call in a process creates the Ray-backed
``MetricSet`` (when metrics are on) and installs the tracer provider (when tracing
is on); later calls in the same process (Serve's local testing mode runs every
deployment in one) get the same objects, so a metric is never registered twice.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from monitoring.config import MonitoringConfig
from monitoring.metrics import MetricSet
from monitoring.tracing import setup_tracing

__all__ = ["Observability", "observability"]


@dataclass
class Observability:
    """What a replica records with: ``metrics`` is None when metrics are off."""

    config: MonitoringConfig
    metrics: MetricSet | None

    @property
    def tracing(self) -> bool:
        return self.config.tracing.enabled


_lock = threading.Lock()
_process: Observability | None = None


def observability(
    config: MonitoringConfig | Mapping[str, Any] | None, tenants: Iterable[str] = ()
) -> Observability:
    """This process's observability, set up from ``config`` on the first call.

    ``tenants`` extends the allow-list of the ``tenant`` label (the gateway passes the
    tenants of its API keys; other deployments record no tenant labels).
    """
    global _process
    cfg = config if isinstance(config, MonitoringConfig) else MonitoringConfig.model_validate(config or {})
    with _lock:
        if _process is None:
            metrics = MetricSet("ray", tenants=tenants) if cfg.metrics.enabled else None
            provider = setup_tracing(cfg.tracing)
            if provider is not None:
                # flush batched spans when the replica process exits
                atexit.register(provider.shutdown)
            _process = Observability(cfg, metrics)
        elif _process.metrics is not None and tenants:
            labeler = _process.metrics.tenant
            labeler.allowed = labeler.allowed | frozenset(t for t in tenants if t)
        return _process
