"""vLLM's scheduler and iteration stats, kept for :meth:`.vllm_engine.VLLMEngine.engine_stats`.

vLLM hands every stat logger a ``SchedulerStats`` / ``IterationStats`` pair once
per engine step. :func:`stat_logger_factory` builds the ``StatLoggerBase`` the
engine installs (vLLM is imported when it is called, not with this module); it
feeds a :class:`StatsSink`, which keeps the latest gauges per data-parallel engine
and running totals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class EngineGauges:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


class StatsSink:
    """Latest scheduler gauges per engine and running totals, fed by vLLM's stat logger hook."""

    def __init__(self) -> None:
        self.gauges: dict[int, EngineGauges] = {}
        self.totals = {
            "prompt_tokens_total": 0.0,
            "generation_tokens_total": 0.0,
            "prefix_cache_queries_tokens_total": 0.0,
            "prefix_cache_hits_tokens_total": 0.0,
            "preemptions_total": 0.0,
        }

    def record(self, scheduler_stats: Any, iteration_stats: Any, engine_idx: int) -> None:
        if scheduler_stats is not None:
            self.gauges[engine_idx] = EngineGauges(
                running=scheduler_stats.num_running_reqs,
                waiting=scheduler_stats.num_waiting_reqs,
                kv_cache_usage=scheduler_stats.kv_cache_usage,
            )
            prefix = scheduler_stats.prefix_cache_stats
            if prefix is not None:
                self.totals["prefix_cache_queries_tokens_total"] += prefix.queries
                self.totals["prefix_cache_hits_tokens_total"] += prefix.hits
        if iteration_stats is not None:
            self.totals["prompt_tokens_total"] += iteration_stats.num_prompt_tokens
            self.totals["generation_tokens_total"] += iteration_stats.num_generation_tokens
            self.totals["preemptions_total"] += iteration_stats.num_preempted_reqs

    def snapshot(self) -> dict[str, float]:
        gauges = list(self.gauges.values())
        out = {
            "running_requests": float(sum(g.running for g in gauges)),
            "waiting_requests": float(sum(g.waiting for g in gauges)),
            "kv_cache_usage_ratio": (sum(g.kv_cache_usage for g in gauges) / len(gauges)) if gauges else 0.0,
        }
        out.update(self.totals)
        return out


def stat_logger_factory(sink: StatsSink) -> Callable[[Any, int], Any]:
    """A per-engine ``StatLoggerBase`` factory feeding ``sink`` (vllm/v1/metrics/loggers.py)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _SinkStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            sink.record(scheduler_stats, iteration_stats, engine_idx)

        def log_engine_initialized(self) -> None:
            pass

    def factory(vllm_config: Any, engine_index: int) -> Any:
        return _SinkStatLogger(vllm_config, engine_index)

    return factory


__all__ = ["EngineGauges", "StatsSink", "stat_logger_factory"]
