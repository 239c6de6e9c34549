"""The serving graph's config: gateway, auth, generation and embedding models.

Composed from each area's own models; ``llmops.config`` adds the process-level
settings (data directory, Ray) on top. Cross-field rules that span areas live here.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from monitoring.config import MonitoringConfig
from services.deployment_config import StrictModel, repeated
from services.embeddings.config import EmbeddingModelConfig
from services.gateway.config import AuthConfig, GatewayConfig, is_loopback
from services.generation.config import ExtractiveModelConfig, GenerationModelConfig
from services.guardrails.config import GuardrailsConfig
from services.rag.config import RagModelConfig
from services.retrieval.config import RetrievalConfig
from services.usage.config import UsageConfig


def _default_models() -> list[GenerationModelConfig]:
    return [ExtractiveModelConfig(name="extractive", engine="extractive")]


class ServicesConfig(StrictModel):
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="HTTP front door.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys and tenants.")
    embeddings: list[EmbeddingModelConfig] = Field(
        default_factory=lambda: [EmbeddingModelConfig()],
        description="Embedding models served on /v1/embeddings.",
    )
    models: list[GenerationModelConfig] = Field(
        default_factory=_default_models,
        description="Generation models served on /v1/chat/completions and /v1/completions.",
    )
    retrieval: RetrievalConfig = Field(
        default_factory=RetrievalConfig, description="Vector store, collections and /v1/retrieve."
    )
    rag: list[RagModelConfig] = Field(
        default_factory=list, description="RAG chat models: retrieve from a collection, then generate."
    )
    monitoring: MonitoringConfig = Field(
        default_factory=MonitoringConfig,
        description="Metrics, tracing, request log, SLOs (alert rules) and the local Prometheus.",
    )
    usage: UsageConfig = Field(
        default_factory=UsageConfig, description="Per-tenant usage ledger behind GET /v1/usage."
    )
    guardrails: GuardrailsConfig = Field(
        default_factory=GuardrailsConfig,
        description="Guardrail chains per model: input checks, output checks on the stream, RAG context.",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> ServicesConfig:
        names = [m.name for m in self.models] + [e.name for e in self.embeddings] + [r.name for r in self.rag]
        dupes = repeated(names)
        if dupes:
            raise ValueError(f"model names must be unique across models and embeddings; repeated: {dupes}")
        if not self.models and not self.embeddings:
            raise ValueError("configure at least one model under 'models' or 'embeddings'")
        emb_names = {e.name for e in self.embeddings}
        for i, m in enumerate(self.models):
            if isinstance(m, ExtractiveModelConfig):
                if not self.embeddings:
                    raise ValueError(
                        f"models[{i}] ({m.name}): the extractive engine needs an embedding model"
                    )
                if m.embedding_model is not None and m.embedding_model not in emb_names:
                    raise ValueError(
                        f'models[{i}].embedding_model: got "{m.embedding_model}", '
                        f"which is not under 'embeddings' ({sorted(emb_names)})"
                    )
        self._check_retrieval(emb_names)
        self._check_guardrails()
        if not self.auth.enabled and not is_loopback(self.gateway.host):
            raise ValueError(
                f'auth.enabled is false but gateway.host is "{self.gateway.host}": auth may be off only '
                "when bound to loopback (127.0.0.1, ::1, localhost)"
            )
        if self.auth.enabled and not self.auth.keys:
            raise ValueError("auth.enabled is true but auth.keys is empty: no client could authenticate")
        return self

    def _check_guardrails(self) -> None:
        chat = {m.name for m in self.models} | {r.name for r in self.rag}
        for name in self.guardrails.models:
            if name not in chat:
                raise ValueError(
                    f'guardrails.models: "{name}" is not a served generation or RAG model ({sorted(chat)})'
                )
        where = [("guardrails.default", self.guardrails.default)] + [
            (f"guardrails.models.{n}", c) for n, c in self.guardrails.models.items()
        ]
        gen = {m.name for m in self.models}
        for path, chain in where:
            for side in ("input", "output"):
                for i, check in enumerate(getattr(chain, side)):
                    if check.judge_model is not None and check.judge_model not in gen:
                        raise ValueError(
                            f'{path}.{side}[{i}].judge_model: "{check.judge_model}" is not a served '
                            f"generation model ({sorted(gen)})"
                        )

    def _check_retrieval(self, emb_names: set[str]) -> None:
        ret = self.retrieval
        if (self.rag or ret.enabled) and not self.embeddings and ret.collections:
            raise ValueError("retrieval needs an embedding model under 'embeddings'")
        for i, c in enumerate(ret.collections):
            if c.embedding_model is not None and c.embedding_model not in emb_names:
                raise ValueError(
                    f'retrieval.collections[{i}].embedding_model: got "{c.embedding_model}", '
                    f"which is not under 'embeddings' ({sorted(emb_names)})"
                )
        gen_names = {m.name for m in self.models}
        coll_names = {c.name for c in ret.collections}
        for i, r in enumerate(self.rag):
            if not ret.enabled:
                raise ValueError(f"rag[{i}] ({r.name}) needs retrieval.enabled")
            if r.collection not in coll_names:
                raise ValueError(
                    f'rag[{i}].collection: got "{r.collection}", which is not under retrieval.collections '
                    f"({sorted(coll_names)})"
                )
            if r.generator not in gen_names:
                raise ValueError(
                    f'rag[{i}].generator: got "{r.generator}", which is not under models ({sorted(gen_names)})'
                )
        d = ret.deployment
        if ret.vector_store.url is None and (
            d.num_replicas > 1 or (d.autoscaling and d.autoscaling.max_replicas > 1)
        ):
            raise ValueError(
                "retrieval.deployment: the embedded (local) vector store admits one process, so one replica; "
                "set retrieval.vector_store.url to a Qdrant server to run more"
            )
