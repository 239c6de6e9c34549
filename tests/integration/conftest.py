"""The real platform on 127.0.0.1, once per test session, driven by the official openai client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from ray import serve

from llmops.config import LLMOpsConfig, validate_config
from llmops.platform import start_platform, stop_platform
from llmops.run_record import free_port
from services.gateway.config import hash_key
from tests.fixtures.otlp_sink import OtlpSink
from tests.fixtures.tiny_hf_model import build_tiny_model

KEYS = {"acme": "sk-test-acme-key", "globex": "sk-test-globex-key"}
ADMIN_KEY = "sk-test-ops-admin-key"  # tenant "ops", may read every tenant's usage
TINY = "tiny-llama"
FIXED_2 = "fixed-2"
GUARDED = "guarded"
#: what the guarded model answers: PII early, a private key from word 30 on
GUARDED_ANSWER = (
    "Call the desk on 212-555-0199 or write to ops-team@example.com and quote card 4111 1111 1111 1111 "
    "if billing asks. The on-call rota is in the wiki, next to the runbooks for every alert we ship. "
    "Here is the deploy key: -----BEGIN RSA PRIVATE KEY----- MIIEowIBAAKCAQEA7bq0bL3Xn8s9 end."
)
GUARDED_CHAIN = {
    "input": [
        {"type": "secrets", "action": "redact"},
        {"type": "pii", "action": "redact"},
        {"type": "prompt_injection", "action": "block"},
        {"type": "harmful", "action": "block"},
    ],
    "output": [{"type": "secrets", "action": "block"}, {"type": "pii", "action": "redact"}],
    "holdback_tokens": 8,
    "scan_every_tokens": 4,
}


def deployment_call(deployment: str, method: str) -> Any:
    """Call a deployment method from the test driver, synchronously.

    Sync on purpose: a handle used inside a test's own event loop is bound to
    that loop, which pytest closes after the test.
    """
    handle = serve.get_deployment_handle(deployment, app_name="llmops")
    return getattr(handle, method).remote().result(timeout_s=60)


@dataclass
class Platform:
    url: str
    config: LLMOpsConfig
    spans: OtlpSink  # what the replicas' tracers exported

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.config.monitoring.metrics.export_port}/metrics"

    @property
    def inference_table(self) -> Path:
        path = self.config.services().monitoring.inference_table.path
        assert path is not None
        return Path(path)

    @property
    def request_log(self) -> Path:
        path = self.config.services().monitoring.request_log.path
        assert path is not None
        return Path(path)

    def client(self, key: str | None = KEYS["acme"], **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "", max_retries=0, timeout=120, **kw)

    def async_client(self, key: str = KEYS["acme"]) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tiny = build_tiny_model(Path(tmp_path_factory.mktemp("models")) / "tiny")
    sink = OtlpSink()
    # replicas inherit the driver's environment: export spans every 200 ms, not 5 s
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    cfg = validate_config(
        {
            "data_dir": str(tmp_path_factory.mktemp("data")),
            "gateway": {"host": "127.0.0.1", "port": free_port(), "max_body_bytes": 64 * 1024},
            "auth": {
                "enabled": True,
                "keys": [
                    *({"tenant": t, "sha256": hash_key(k)} for t, k in KEYS.items()),
                    {"tenant": "ops", "sha256": hash_key(ADMIN_KEY), "admin": True},
                ],
            },
            "embeddings": [
                {"name": "all-minilm-l6-v2", "max_batch_size": 32, "deployment": {"num_cpus": 0.25}}
            ],
            "models": [
                {
                    "name": "extractive",
                    "engine": "extractive",
                    "context_length": 512,
                    "deployment": {"num_cpus": 0.25},
                    "pricing": {
                        "mode": "token",
                        "prompt_usd_per_1k_tokens": 0.5,
                        "completion_usd_per_1k_tokens": 1.5,
                    },
                },
                {
                    "name": TINY,
                    "engine": "transformers",
                    "path": str(tiny),
                    "device": "cpu",
                    "max_batch_size": 8,
                    "default_max_tokens": 16,
                    "deployment": {"num_cpus": 0.25},
                    "pricing": {"mode": "gpu_hour", "usd_per_gpu_hour": 3.6},
                },
                {
                    # guardrails on the real gateway (tests/integration/test_guardrails.py): an answer
                    # holding PII, then a private key, streamed word by word
                    "name": GUARDED,
                    "engine": "fixed",
                    "text": GUARDED_ANSWER,
                    "token_interval_s": 0.002,
                    "deployment": {"num_cpus": 0.1},
                },
                {
                    # two replicas, each request 50 ms in flight: test_replica_death kills one under load
                    "name": FIXED_2,
                    "engine": "fixed",
                    "latency_s": 0.05,
                    "deployment": {"num_replicas": 2, "num_cpus": 0.1, "max_ongoing_requests": 32},
                },
            ],
            "guardrails": {"models": {GUARDED: GUARDED_CHAIN}},
            "retrieval": {
                "collections": [
                    {"name": "docs", "hybrid": True, "required_metadata": []},
                    {"name": "dense-only", "hybrid": False, "distance": "dot"},
                ],
            },
            "rag": [
                {
                    "name": "rag-docs",
                    "collection": "docs",
                    "generator": "extractive",
                    "top_k": 3,
                    "reserve_completion_tokens": 64,
                },
                {"name": "rag-wide", "collection": "docs", "generator": "extractive", "top_k": 20},
            ],
            "monitoring": {
                "metrics": {"export_port": free_port()},
                "tracing": {"enabled": True, "otlp_endpoint": sink.endpoint},
                "prometheus": {"port": free_port(), "scrape_interval_s": 1},
                # every request but the load-test model's, written twice a second
                "inference_table": {"flush_interval_s": 0.5, "rates": [{"model": FIXED_2, "rate": 0.0}]},
            },
            "usage": {"flush_interval_s": 0.5},
            "ray": {"num_cpus": 4},
        },
        "integration fixture",
    )
    url = start_platform(cfg, ready_timeout_s=300)
    try:
        yield Platform(url=url, config=cfg, spans=sink)
    finally:
        stop_platform()
        sink.close()
