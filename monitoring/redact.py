"""PII and secret redaction for text that may reach a log or the inference table.

Used when ``monitoring.request_log.include_prompts`` is on, and for every text
column of the inference table: prompts and completions are written only after
:func:`redact`. It runs the guardrails' own detectors
(:class:`services.guardrails.pii.PiiCheck` and
:class:`services.guardrails.secrets.SecretsCheck`, default settings), so a log
masks exactly what an input or output ``redact`` check masks; only the labels are
the log's shorter kinds (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[SECRET]``), which
dashboards and the continuous-eval readers already expect. What the detectors do
not know (names, street addresses) is left, which is why logging prompts is off by
default.

Layering: ``monitoring`` imports no area (DESIGN.md), but two redactors that
disagree would be worse, so the detectors are imported lazily, on the first call
(``presidio_analyzer`` takes ~3 s to import): importing this module stays cheap
and cycle-free. Call :func:`warm` at start-up to pay that cost before the first
request.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

__all__ = ["LOG_LABELS", "redact", "warm"]

#: detector label -> the log's kind; every secret label becomes SECRET, others keep their name
LOG_LABELS: dict[str, str] = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CARD",
    "US_SSN": "SSN",
    "IP_ADDRESS": "IP",
    "IBAN_CODE": "IBAN",
}
_lock = threading.Lock()


@functools.cache
def _detectors() -> tuple[Any, Any, dict[str, str]]:
    with _lock:  # the inference-table writer thread and the event loop may both be first
        from services.guardrails.pii import PiiCheck
        from services.guardrails.secrets import LABELS, SecretsCheck

        return PiiCheck(), SecretsCheck(), {**LOG_LABELS, **dict.fromkeys(LABELS, "SECRET")}


def warm() -> None:
    """Build the detectors now (imports Presidio) rather than on the first :func:`redact`."""
    _detectors()


def redact(text: str) -> str:
    """``text`` with e-mails, phone/card/SSN/IBAN numbers, IPs and secrets replaced by ``[KIND]``."""
    if not text:
        return text
    from services.guardrails.pii import redact as redact_spans

    pii, secrets, labels = _detectors()
    return redact_spans(text, [*secrets.find(text), *pii.find(text)], labels=labels)
