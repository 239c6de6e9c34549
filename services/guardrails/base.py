"""The contract every guardrail check implements.

A check looks at texts and reports :class:`Finding` s: character spans with a
label and a score. Span checks (PII, secrets) report each entity; classifiers
(prompt injection, harmful request, a Hugging Face model, a judge) report one
finding per text whose score is at or over their threshold, spanning the window
that scored highest (long texts are scored in windows, max-pooled).

What the chain does with a finding (block, redact, flag; enforce or shadow; fail
open or closed when the check raises) is configuration, not the check's business:
see :mod:`services.guardrails.chain`. Checks are synchronous and batched: the
chain runs them off the event loop, several texts per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Check", "Finding", "Scorer"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a check found in a text."""

    #: what was found: an entity type (``EMAIL_ADDRESS``, ``AWS_KEY``) or a class (``injection``)
    label: str
    #: character span in the scanned text (a classifier: the window that scored highest)
    start: int
    end: int
    #: the check's confidence (a classifier: its probability; a pattern: the recognizer's score)
    score: float = 1.0


@runtime_checkable
class Check(Protocol):
    """A guardrail check: ``scan`` returns, per text, what it found (empty: clean)."""

    #: the check's kind, e.g. ``pii``; the chain names decisions by the configured check name
    kind: str
    #: True when findings are entity spans that can be redacted (PII, secrets); False for
    #: classifiers, whose findings mark a whole text (redacting them means blocking)
    spans: bool

    # Optional: span checks also set ``max_span_chars``, the longest entity they detect
    # (the streaming hold-back must cover it so a span split across chunks is seen whole).

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]: ...


@runtime_checkable
class Scorer(Protocol):
    """A classifier check also exposes raw scores (for evaluation and threshold tuning)."""

    threshold: float

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Per text, the max-pooled positive-class probability over its windows."""
        ...
