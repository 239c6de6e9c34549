"""The real platform on 127.0.0.1, once per test session, driven by the official openai client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from ray import serve

from llmops.cli import start_platform, stop_platform
from llmops.config import LLMOpsConfig, validate_config
from services.gateway.config import hash_key
from tests.fixtures.tiny_hf_model import build_tiny_model

KEYS = {"acme": "sk-test-acme-key", "globex": "sk-test-globex-key"}
TINY = "tiny-llama"


def deployment_call(deployment: str, method: str) -> Any:
    """Call a deployment method from the test driver, synchronously.

    Sync on purpose: a handle used inside a test's own event loop is bound to
    that loop, which pytest closes after the test.
    """
    handle = serve.get_deployment_handle(deployment, app_name="llmops")
    return getattr(handle, method).remote().result(timeout_s=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Platform:
    url: str
    config: LLMOpsConfig

    def client(self, key: str | None = KEYS["acme"], **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "", max_retries=0, timeout=120, **kw)

    def async_client(self, key: str = KEYS["acme"]) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tiny = build_tiny_model(Path(tmp_path_factory.mktemp("models")) / "tiny")
    cfg = validate_config(
        {
            "data_dir": str(tmp_path_factory.mktemp("data")),
            "gateway": {"host": "127.0.0.1", "port": free_port(), "max_body_bytes": 64 * 1024},
            "auth": {
                "enabled": True,
                "keys": [{"tenant": t, "sha256": hash_key(k)} for t, k in KEYS.items()],
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
                },
                {
                    "name": TINY,
                    "engine": "transformers",
                    "path": str(tiny),
                    "device": "cpu",
                    "max_batch_size": 8,
                    "default_max_tokens": 16,
                    "deployment": {"num_cpus": 0.25},
                },
            ],
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
            "ray": {"num_cpus": 4},
        },
        "integration fixture",
    )
    url = start_platform(cfg, ready_timeout_s=300)
    try:
        yield Platform(url=url, config=cfg)
    finally:
        stop_platform()
