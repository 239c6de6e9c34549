"""Engine factory: one config entry in, one :class:`Engine` out.

Engine modules are imported lazily so that, e.g., a CPU-only install never
imports vLLM.
"""

from __future__ import annotations

from services.embeddings.config import EmbeddingModelConfig
from services.generation.config import (
    ExtractiveModelConfig,
    FixedModelConfig,
    GenerationModelConfig,
    TransformersModelConfig,
    VLLMModelConfig,
)
from services.generation.protocol import Engine


def build_engine(config: GenerationModelConfig, embeddings: list[EmbeddingModelConfig]) -> Engine:
    """Construct (not start) the engine a model entry names."""
    if isinstance(config, ExtractiveModelConfig):
        from services.generation.extractive import ExtractiveEngine

        emb = embedding_for(config, embeddings)
        return ExtractiveEngine(config, emb.path if emb else None, emb.device if emb else "cpu")
    if isinstance(config, TransformersModelConfig):
        from services.generation.transformers_engine import TransformersEngine

        return TransformersEngine(config)
    if isinstance(config, VLLMModelConfig):
        from services.generation.vllm_engine import VLLMEngine

        return VLLMEngine(config)
    if isinstance(config, FixedModelConfig):
        from services.generation.fixed import FixedEngine

        return FixedEngine(config)
    raise TypeError(f"unknown engine config {type(config).__name__}")


def embedding_for(
    config: ExtractiveModelConfig, embeddings: list[EmbeddingModelConfig]
) -> EmbeddingModelConfig | None:
    """The embedding entry an extractive model scores with (by name, else the first)."""
    if config.embedding_model is None:
        return embeddings[0] if embeddings else None
    for e in embeddings:
        if e.name == config.embedding_model:
            return e
    raise ValueError(f"model {config.name!r}: embedding_model {config.embedding_model!r} is not configured")
