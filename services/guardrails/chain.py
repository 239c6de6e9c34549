"""The guardrail chain: builds each model's checks and turns their findings into decisions.

Input side (:meth:`Guardrails.check_input`): every check of the model's input
chain scans the prompt's texts, in order, in one hop off the event loop (the
checks are CPU-bound and batched). A redaction applies before the next check
sees the text. A block stops the chain and becomes a 400
``content_policy_violation`` naming the check; shadow mode records what would
have happened and lets the text through; a check that raises is ``error_open``
(let through) or ``error_closed`` (blocked) per its ``on_error``.

Output side: :mod:`services.guardrails.stream` applies the output chain to the
stream behind a bounded hold-back, with the same decision rules
(:func:`decide`). Every decision becomes a metric, a field of the request log
and inference table, and an entry of the ``X-Guardrails`` response header.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.errors import ContentPolicyError
from services.guardrails.base import Check, Finding
from services.guardrails.config import SPAN_TYPES, ChainConfig, CheckConfig, GuardrailsConfig
from services.guardrails.redact_spans import redact_spans

__all__ = ["CheckRun", "Decision", "Guardrails", "InputVerdict", "build_check", "decide", "header_value"]

logger = logging.getLogger("llmops.guardrails")

#: results, most severe first: a response's decision per check is the most severe seen
SEVERITY: tuple[str, ...] = (
    "error_closed", "blocked", "shadow_blocked", "redacted", "shadow_redacted", "dropped", "flagged",
    "error_open", "pass",
)  # fmt: skip
_RANK = {r: i for i, r in enumerate(SEVERITY)}

#: what each check says in a block message
_WHAT = {
    "prompt_injection": "a prompt injection or jailbreak",
    "harmful": "a harmful request",
    "toxicity": "toxic content",
    "pii": "personal data",
    "secrets": "a secret (API key, token or private key)",
    "hf_classifier": "content its classifier flags",
    "llm_judge": "content the moderation model judged unsafe",
}


@dataclass
class Decision:
    """What one check decided for one request and direction."""

    check: str
    direction: str  # input | output | context
    result: str = "pass"
    labels: tuple[str, ...] = ()
    score: float | None = None
    seconds: float = 0.0

    def merge(self, result: str, labels: Sequence[str], score: float | None, seconds: float) -> None:
        """Fold in one more run (a stream step): keep the most severe result, add up the time."""
        if _RANK[result] < _RANK[self.result]:
            self.result = result
        self.labels = tuple(sorted({*self.labels, *labels}))
        if score is not None:
            self.score = score if self.score is None else max(self.score, score)
        self.seconds += seconds

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "direction": self.direction, "result": self.result}
        if self.labels:
            out["labels"] = list(self.labels)
        if self.score is not None:
            out["score"] = round(self.score, 4)
        out["ms"] = round(self.seconds * 1000, 3)
        return out


def header_value(decisions: Sequence[Decision]) -> str:
    """``X-Guardrails``: ``input.prompt_injection=pass, input.pii=redacted;labels=EMAIL_ADDRESS, ...``."""
    parts = []
    for d in decisions:
        item = f"{d.direction}.{d.check}={d.result}"
        if d.labels:
            item += ";labels=" + "|".join(d.labels)
        parts.append(item)
    return ", ".join(parts)


@dataclass
class CheckRun:
    """A configured check and its built instance."""

    config: CheckConfig
    check: Check

    @property
    def name(self) -> str:
        return self.config.check_name

    @property
    def spans(self) -> bool:
        return self.config.type in SPAN_TYPES


def decide(cfg: CheckConfig, findings: Sequence[Finding]) -> str:
    """The result of a check's findings on one text under its action and mode."""
    if not findings:
        return "pass"
    if cfg.action == "flag":
        return "flagged"
    if cfg.action == "redact":
        return "redacted" if cfg.mode == "enforce" else "shadow_redacted"
    return "blocked" if cfg.mode == "enforce" else "shadow_blocked"


def error_result(cfg: CheckConfig) -> str:
    return "error_open" if cfg.on_error == "open" else "error_closed"


@dataclass
class InputVerdict:
    """The input chain's outcome: the (possibly redacted) texts and every decision."""

    texts: list[str]
    decisions: list[Decision] = field(default_factory=list)
    blocked_by: Decision | None = None


def build_check(cfg: CheckConfig, judge: Callable[[str], Callable[[list[dict[str, str]]], str]]) -> Check:
    """A check instance for ``cfg`` (imports are lazy: a chain without classifiers loads no model)."""
    t = cfg.type
    if t in ("prompt_injection", "harmful", "toxicity"):
        from services.guardrails.classifier import ClassifierCheck

        return ClassifierCheck(kind=t, artifact=cfg.path, threshold=cfg.threshold)
    if t == "pii":
        from services.guardrails.pii import PiiCheck

        return PiiCheck() if cfg.entities is None else PiiCheck(entities=cfg.entities)
    if t == "secrets":
        from services.guardrails.secrets import SecretsCheck

        return SecretsCheck()
    if t == "hf_classifier":
        from services.guardrails.hf import HFClassifierCheck

        assert cfg.path is not None  # the config validator requires it
        kwargs: dict[str, Any] = {"path": cfg.path}
        if cfg.labels is not None:
            kwargs["labels"] = cfg.labels
        if cfg.threshold is not None:
            kwargs["threshold"] = cfg.threshold
        return HFClassifierCheck(**kwargs)
    if t == "llm_judge":
        from services.guardrails.judge import JudgeCheck

        assert cfg.judge_model is not None
        return JudgeCheck(judge(cfg.judge_model))
    raise ValueError(f"unknown check type {t!r}")


def _key(cfg: CheckConfig) -> tuple[Any, ...]:
    # the same check configured in several chains is one instance (one model in memory)
    return (cfg.type, cfg.name, cfg.path, cfg.threshold, tuple(cfg.entities or ()),
            tuple(cfg.labels or ()), cfg.judge_model)  # fmt: skip


class Guardrails:
    """Every model's chain, built once per gateway replica."""

    def __init__(
        self,
        config: GuardrailsConfig | dict[str, Any] | None,
        judge: Callable[[str], Callable[[list[dict[str, str]]], str]] | None = None,
        metrics: Any = None,
        factory: Callable[[CheckConfig], Check] | None = None,
    ) -> None:
        self.config = GuardrailsConfig.model_validate(config or {})
        self.metrics = metrics
        self._judge = judge or _no_judge
        self._factory = factory or (lambda cfg: build_check(cfg, self._judge))
        self._instances: dict[tuple[Any, ...], Check] = {}
        self._runs: dict[int, tuple[list[CheckRun], list[CheckRun]]] = {}
        for chain in self.config.chains():
            self._runs[id(chain)] = (self._build(chain.input), self._build(chain.output))

    def _build(self, cfgs: list[CheckConfig]) -> list[CheckRun]:
        runs = []
        for cfg in cfgs:
            key = _key(cfg)
            if key not in self._instances:
                self._instances[key] = self._factory(cfg)
            runs.append(CheckRun(cfg, self._instances[key]))
        return runs

    def chain(self, model: str) -> ChainConfig:
        return self.config.chain_for(model)

    def input_runs(self, model: str) -> list[CheckRun]:
        return self._runs[id(self.chain(model))][0]

    def output_runs(self, model: str) -> list[CheckRun]:
        return self._runs[id(self.chain(model))][1]

    def warm_up(self) -> None:
        """Load every check's model now (first request must not pay for it)."""
        for check in self._instances.values():
            try:
                check.scan(["warm-up"])
            except Exception:  # a broken check shows up (and is decided) on requests
                logger.warning("guardrail check %s failed to warm up", check.kind, exc_info=True)

    # -- input ----------------------------------------------------------------------
    async def check_input(
        self,
        model: str,
        texts: list[str],
        classify: Sequence[bool] | None = None,
        param: str = "messages",
        decisions: list[Decision] | None = None,
    ) -> InputVerdict:
        """Run the model's input chain over ``texts``; raises :class:`ContentPolicyError` on a block.

        ``classify[i]`` False keeps text ``i`` from classifiers (a system prompt is the operator's
        own; span checks still redact it). The decisions are appended to ``decisions`` (the
        request's record) before a block is raised.
        """
        runs = self.input_runs(model)
        if not runs:
            return InputVerdict(texts)
        verdict = await asyncio.to_thread(self._run_input, runs, list(texts), classify)
        self.count(verdict.decisions, model)
        if decisions is not None:
            decisions.extend(verdict.decisions)
        if verdict.blocked_by is not None:
            d = verdict.blocked_by
            cause = "the check failed and is configured to fail closed" if d.result == "error_closed" else (
                f"it detected {_WHAT.get(_type_of(runs, d.check), 'a policy violation')}"
            )  # fmt: skip
            raise ContentPolicyError(
                f"The request was blocked by the guardrail check '{d.check}': {cause}.", param=param
            )
        return verdict

    def _run_input(
        self, runs: list[CheckRun], texts: list[str], classify: Sequence[bool] | None
    ) -> InputVerdict:
        verdict = InputVerdict(texts)
        for run in runs:
            idx = [i for i in range(len(texts)) if run.spans or classify is None or classify[i]]
            d = Decision(run.name, "input")
            verdict.decisions.append(d)
            t0 = time.perf_counter()
            try:
                found = run.check.scan([texts[i] for i in idx]) if idx else []
            except Exception:
                logger.warning("guardrail check %s failed", run.name, exc_info=True)
                d.merge(error_result(run.config), (), None, time.perf_counter() - t0)
                if d.result == "error_closed":
                    verdict.blocked_by = d
                    return verdict
                continue
            seconds = time.perf_counter() - t0
            result = "pass"
            labels: set[str] = set()
            score: float | None = None
            for i, findings in zip(idx, found, strict=True):
                r = decide(run.config, findings)
                if _RANK[r] < _RANK[result]:
                    result = r
                labels.update(f.label for f in findings)
                if findings and not run.spans:
                    score = max(f.score for f in findings) if score is None else max(score, *(
                        f.score for f in findings))  # fmt: skip
                if r == "redacted":
                    texts[i] = redact_spans(texts[i], findings)
            d.merge(result, sorted(labels), score, seconds)
            if result == "blocked":
                verdict.blocked_by = d
                return verdict
        return verdict

    def count(self, decisions: Sequence[Decision], model: str) -> None:
        if self.metrics is None:
            return
        for d in decisions:
            self.metrics.count_guardrail(d.check, d.direction, d.result, model, d.seconds)


def _type_of(runs: list[CheckRun], name: str) -> str:
    return next((r.config.type for r in runs if r.name == name), "")


def _no_judge(model: str) -> Callable[[list[dict[str, str]]], str]:
    def call(messages: list[dict[str, str]]) -> str:
        raise RuntimeError(f"no judge model is wired for llm_judge ({model})")

    return call
