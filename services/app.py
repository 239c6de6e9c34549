"""The Serve application builder: ``services.app:build_app`` (also a Serve ``import_path``).

One gateway (FastAPI ingress) in front of one generation deployment per
configured model, one embedding deployment per embedding model, the retrieval
deployment and one RAG deployment per RAG model; the gateway holds a
``DeploymentHandle`` to each.
"""

from __future__ import annotations

import re
from typing import Any

from ray.serve import Application

from services.config import ServicesConfig
from services.deployment_config import DeploymentSettings
from services.embeddings.deployment import EmbeddingDeployment
from services.gateway.app import Gateway
from services.generation.deployment import GenerationDeployment


def deployment_name(kind: str, model: str) -> str:
    """A Serve deployment name for a model id (Serve names allow no '/' or ':')."""
    return f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}"


def planned_deployments(cfg: ServicesConfig) -> list[tuple[str, str, DeploymentSettings]]:
    """Every deployment :func:`build_app` binds: (Serve name, config path, settings)."""
    plan = [
        (deployment_name("generation", m.name), f"models[{i}].deployment", m.deployment)
        for i, m in enumerate(cfg.models)
    ]
    plan += [
        (deployment_name("embedding", e.name), f"embeddings[{i}].deployment", e.deployment)
        for i, e in enumerate(cfg.embeddings)
    ]
    if cfg.retrieval.enabled and cfg.retrieval.collections:
        plan.append(("retrieval", "retrieval.deployment", cfg.retrieval.deployment))
        plan += [
            (deployment_name("rag", r.name), f"rag[{i}].deployment", r.deployment)
            for i, r in enumerate(cfg.rag)
        ]
    if cfg.usage.enabled:
        plan.append(("usage", "usage.deployment", cfg.usage.deployment))
    plan.append(("gateway", "gateway.deployment", cfg.gateway.deployment))
    return plan


def build_app(config: ServicesConfig | dict[str, Any]) -> Application:
    """Bind the whole serving graph from a config (the model, or its dict form)."""
    cfg = config if isinstance(config, ServicesConfig) else ServicesConfig.model_validate(config)
    embeddings = [e.model_dump() for e in cfg.embeddings]
    monitoring = cfg.monitoring.model_dump()
    generation = {
        m.name: GenerationDeployment.options(  # type: ignore[attr-defined]
            **m.deployment.serve_options(deployment_name("generation", m.name))
        ).bind(m.model_dump(), embeddings, monitoring)
        for m in cfg.models
    }
    embedding = {
        e.name: EmbeddingDeployment.options(  # type: ignore[attr-defined]
            **e.deployment.serve_options(deployment_name("embedding", e.name))
        ).bind(e.model_dump(), monitoring)
        for e in cfg.embeddings
    }
    retrieval = None
    rag: dict[str, Any] = {}
    if cfg.retrieval.enabled and cfg.retrieval.collections:
        from services.rag.deployment import RagDeployment
        from services.retrieval.deployment import RetrievalDeployment

        retrieval = RetrievalDeployment.options(  # type: ignore[attr-defined]
            **cfg.retrieval.deployment.serve_options("retrieval")
        ).bind(cfg.retrieval.model_dump(), embeddings, ".", embedding, monitoring)
        rag = {
            r.name: RagDeployment.options(  # type: ignore[attr-defined]
                **r.deployment.serve_options(deployment_name("rag", r.name))
            ).bind(
                r.model_dump(),
                retrieval,
                generation[r.generator],
                monitoring,
                cfg.guardrails.chain_for(r.name).rag_context.model_dump(),
            )
            for r in cfg.rag
        }
    usage = None
    if cfg.usage.enabled:
        from services.usage.deployment import UsageLedger

        usage = UsageLedger.options(  # type: ignore[attr-defined]
            **cfg.usage.deployment.serve_options("usage")
        ).bind(cfg.usage.model_dump(), ".")
    return Gateway.options(  # type: ignore[attr-defined]
        **cfg.gateway.deployment.serve_options("gateway")
    ).bind(
        cfg.gateway.model_dump(),
        cfg.auth.model_dump(),
        {**generation, **rag},
        embedding,
        retrieval,
        monitoring,
        usage,
        cfg.usage.flush_interval_s,
        cfg.guardrails.model_dump(),
    )
