"""Config of the guardrail chains: which checks run on which model, and what a finding does.

A chain has input checks (run on the prompt before the engine sees it), output
checks (run on the answer as it streams, behind a bounded hold-back) and the RAG
context scan (retrieved chunks, before they enter the prompt). Each check says
what a finding does (``action``), whether that is enforced or only recorded
(``mode``), and what happens when the check itself fails (``on_error``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.deployment_config import StrictModel, repeated

CheckType = Literal[
    "prompt_injection", "harmful", "toxicity", "pii", "secrets", "hf_classifier", "llm_judge"
]  # fmt: skip
#: checks whose findings are entity spans (can be redacted); the rest classify a whole text
SPAN_TYPES = frozenset({"pii", "secrets"})
#: checks trained by ``python -m services.guardrails.train`` (artifacts in services/guardrails/models)
TRAINED_TYPES = frozenset({"prompt_injection", "harmful", "toxicity"})


class CheckConfig(StrictModel):
    """One check in a chain."""

    type: CheckType = Field(
        description="prompt_injection | harmful | toxicity (the trained MiniLM classifiers), pii "
        "(Presidio pattern recognizers), secrets (API keys, tokens, private keys), hf_classifier "
        "(a local Hugging Face sequence-classification directory), llm_judge (a served model asked "
        "Llama-Guard style)."
    )
    name: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_]{0,47}$",
        description="Name in metrics, the X-Guardrails header and logs (default: the type).",
    )
    action: Literal["block", "redact", "flag"] = Field(
        "block",
        description="What a finding does: block (input: 400 content_policy_violation; output: the answer "
        "ends with finish_reason content_filter), redact (span checks only: the span becomes [ENTITY]), "
        "flag (recorded, nothing changed).",
    )
    mode: Literal["enforce", "shadow"] = Field(
        "enforce",
        description="shadow: record what the action would have done (shadow_blocked, shadow_redacted) "
        "and let the text through unchanged; for trying a check on live traffic.",
    )
    on_error: Literal["open", "closed"] = Field(
        "closed",
        description="When the check itself fails (model error, judge unreachable): open lets the text "
        "through (counted error_open), closed blocks it (error_closed).",
    )
    threshold: float | None = Field(
        None, gt=0, lt=1, description="Classifiers: score at or above which a text is a finding "
        "(default: the threshold chosen on the dev split, from the model's card)."
    )  # fmt: skip
    entities: list[str] | None = Field(
        None, description="pii: entity types to detect (default: the check's own list, see README)."
    )
    path: str | None = Field(
        None, description="hf_classifier: local model directory (required); prompt_injection/harmful/"
        "toxicity: another artifact than the shipped one."
    )  # fmt: skip
    labels: list[str] | None = Field(
        None, description="hf_classifier: the model's labels that count as positive (e.g. [INJECTION])."
    )
    judge_model: str | None = Field(
        None, description="llm_judge: the served generation model to ask (required)."
    )

    @property
    def check_name(self) -> str:
        return self.name or self.type

    @model_validator(mode="after")
    def _check(self) -> CheckConfig:
        if self.action == "redact" and self.type not in SPAN_TYPES:
            raise ValueError(
                f"action: redact needs a span check (pii, secrets); a {self.type} finding marks the "
                "whole text: use block or flag"
            )
        if self.type == "hf_classifier" and not self.path:
            raise ValueError("path: an hf_classifier check needs a local model directory")
        if self.type == "llm_judge" and not self.judge_model:
            raise ValueError("judge_model: an llm_judge check needs the name of a served generation model")
        if self.entities is not None and self.type != "pii":
            raise ValueError(f"entities: only pii checks take entities, not {self.type}")
        if self.labels is not None and self.type != "hf_classifier":
            raise ValueError(f"labels: only hf_classifier checks take labels, not {self.type}")
        return self


class RagContextConfig(StrictModel):
    """The indirect-injection scan of retrieved chunks (RAG models).

    Two layers: chunks flagged at ingestion (collections with ``scan_injection``) are left
    out by the search itself (``exclude_flagged``, an indexed filter); the chunks a search
    returns are then scored (``enabled``) before the prompt is built, reusing the score
    stored at ingestion where there is one.
    """

    enabled: bool = Field(False, description="Scan retrieved chunks before they enter the prompt.")
    action: Literal["drop", "flag"] = Field(
        "drop", description="drop: a flagged chunk is left out of the prompt; flag: kept, recorded."
    )
    threshold: float | None = Field(
        None, gt=0, lt=1, description="prompt_injection score at or above which a chunk is flagged "
        "(default: the classifier card's threshold)."
    )  # fmt: skip
    exclude_flagged: bool | None = Field(
        None,
        description="The RAG search leaves out chunks flagged at ingestion (the collection's "
        "scan_injection), whether or not the scan is enabled. Default: true with action drop, false "
        "with action flag (flag records what would be dropped, so it must see those chunks).",
    )
    on_error: Literal["open", "closed"] = Field(
        "closed",
        description="When the classifier fails: closed leaves the chunks it could not score out of the "
        "prompt (error_closed), open keeps them (error_open).",
    )

    @property
    def excludes_flagged(self) -> bool:
        """Whether the RAG search passes exclude_flagged (the default follows ``action``)."""
        return self.action == "drop" if self.exclude_flagged is None else self.exclude_flagged


class ChainConfig(StrictModel):
    """The checks of one model (or the default for every model)."""

    input: list[CheckConfig] = Field(
        default_factory=list, description="Checks on the prompt (every message), before the engine."
    )
    output: list[CheckConfig] = Field(
        default_factory=list, description="Checks on the answer, streamed or not, before the client."
    )
    holdback_tokens: int = Field(
        16,
        ge=0,
        le=256,
        description="Streams: the newest tokens held back from the client so a span split across "
        "chunks is seen whole before any of it is sent (never less text than the longest entity the "
        "output span checks detect). The first token reaches the client once holdback_tokens + 1 "
        "tokens were generated.",
    )
    scan_every_tokens: int = Field(
        8,
        ge=1,
        le=256,
        description="Streams: output checks run once per this many new tokens (text is released in "
        "steps of this size); the client trails the engine by fewer than holdback_tokens + "
        "scan_every_tokens tokens.",
    )
    rag_context: RagContextConfig = Field(
        default_factory=RagContextConfig, description="Indirect-injection scan of retrieved chunks."
    )

    @model_validator(mode="after")
    def _unique(self) -> ChainConfig:
        for side in ("input", "output"):
            dupes = repeated([c.check_name for c in getattr(self, side)])
            if dupes:
                raise ValueError(f"{side}: check names must be unique in a chain; repeated: {dupes}")
        return self

    @property
    def empty(self) -> bool:
        return not self.input and not self.output and not self.rag_context.enabled


class GuardrailsConfig(StrictModel):
    """Guardrail chains: a default, and whole-chain overrides per model."""

    default: ChainConfig = Field(
        default_factory=ChainConfig, description="The chain of every model without its own."
    )
    models: dict[str, ChainConfig] = Field(
        default_factory=dict, description="Per model name, a chain replacing the default (e.g. {} for none)."
    )

    def chain_for(self, model: str) -> ChainConfig:
        return self.models.get(model, self.default)

    def chains(self) -> list[ChainConfig]:
        return [self.default, *self.models.values()]
