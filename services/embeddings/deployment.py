"""The embedding deployment: dynamic batching over a sentence-transformers model.

Each call carries the texts of one API request; ``@serve.batch`` gathers the
calls that arrive within ``batch_wait_timeout_s`` (up to ``max_batch_size``
calls), encodes all their texts in one forward pass, and hands each caller its
rows back.

The forward pass runs on the replica's user event loop, not in a worker thread:
measured here, a thread doubled the time requests took to reach the batch queue
(the loop and the encoder fought over the GIL, so batches stayed at 1-2 texts),
while blocking lets callers pile up during a pass and join the next batch. Serve
runs user code on its own loop, apart from the replica's control plane.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from monitoring.metrics import MetricSet
from monitoring.runtime import observability
from services.embeddings.config import EmbeddingModelConfig
from services.embeddings.encoder import Encoder
from services.errors import ContextLengthExceededError, InvalidRequestError

logger = logging.getLogger("llmops.embeddings")


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # (len(texts), dimension) float32, unit norm
    prompt_tokens: int


class EmbeddingServer:
    """Validation and batched encoding; the Serve deployment wraps this class."""

    def __init__(self, config: dict[str, Any], metrics: MetricSet | None = None) -> None:
        self.config = EmbeddingModelConfig.model_validate(config)
        self.metrics = metrics
        if self.config.torch_threads:
            import torch

            torch.set_num_threads(self.config.torch_threads)
        self.encoder = Encoder(
            self.config.path,
            self.config.device,
            self.config.backend,
            threads=self.config.torch_threads,
            cache_dir=self.config.cache_dir,
            precision=self.config.precision,
        )
        self.max_input_tokens = self.config.max_input_tokens or self.encoder.max_seq_length
        self.batch_sizes: list[int] = []  # texts per forward pass, newest last (bounded)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.config.name,
            "kind": "embedding",
            "engine": "sentence-transformers",
            "context_length": self.max_input_tokens,
            "dimension": self.encoder.dimension,
        }

    def check(self, texts: list[str]) -> int:
        """Reject empty or over-long inputs; returns the token count of all texts."""
        counts = self.encoder.count_tokens(texts)
        for i, (text, n) in enumerate(zip(texts, counts, strict=True)):
            if not text.strip():
                raise InvalidRequestError(f"input[{i}] is empty; each input must contain text", param="input")
            if n > self.max_input_tokens:
                raise ContextLengthExceededError(
                    f"This model's maximum input length is {self.max_input_tokens} tokens; "
                    f"input[{i}] has {n} tokens.",
                    param="input",
                    value=n,
                )
        return sum(counts)

    def encode_many(self, batches: list[list[str]]) -> list[np.ndarray]:
        """One forward pass for several callers' texts; split the rows back per caller."""
        flat = [t for texts in batches for t in texts]
        self.batch_sizes = [*self.batch_sizes[-999:], len(flat)]
        if self.metrics is not None:
            self.metrics.observe_embedding_batch(self.config.name, len(flat))
        vectors = self.encoder.encode(flat, batch_size=max(len(flat), 1))
        out, start = [], 0
        for texts in batches:
            out.append(vectors[start : start + len(texts)])
            start += len(texts)
        return out


@serve.deployment(name="embeddings")
class EmbeddingDeployment:
    """Serve wrapper: ``embed(texts)`` is dynamically batched across callers."""

    def __init__(self, config: dict[str, Any], monitoring: dict[str, Any] | None = None) -> None:
        self.server = EmbeddingServer(config, observability(monitoring).metrics)
        cfg = self.server.config
        self._batched.set_max_batch_size(cfg.max_batch_size)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]
        logger.info("embedding model %s ready (dim %d)", cfg.name, self.server.encoder.dimension)

    async def info(self) -> dict[str, Any]:
        return self.server.info()

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        tokens = self.server.check(texts)
        vectors = await self._batched(texts)
        return EmbeddingResult(vectors=vectors, prompt_tokens=tokens)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, batches: list[list[str]]) -> list[np.ndarray]:
        return self.server.encode_many(batches)  # blocking on purpose: see the module docstring

    async def batch_stats(self) -> list[int]:
        """Texts per forward pass of the recent batches (for tests and benchmarks)."""
        return list(self.server.batch_sizes)
