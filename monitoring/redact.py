"""PII and secret redaction for text that may reach a log.

Used when ``monitoring.request_log.include_prompts`` is on: prompts and completions are
logged only after :func:`redact`. Pattern-based, so it errs towards redacting (a
16-digit order number that passes the Luhn check is redacted as a card number);
what it does not know (names, street addresses) it leaves, which is why logging
prompts is off by default.
"""

from __future__ import annotations

import re

__all__ = ["PATTERNS", "redact"]

# Order matters: secrets and e-mails before the number patterns that would eat
# their digits.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # "Bearer <token>", "sk-..." style API keys, AWS access key ids, JWTs
    ("SECRET", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")),
    ("SECRET", re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}\b")),
    ("SECRET", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    ("SECRET", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b")),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("IP", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
    ("IP", re.compile(r"(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b")),
    ("SSN", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("CARD", re.compile(r"\b(?:\d[ -]?){12,18}\d\b")),
    ("PHONE", re.compile(r"(?<![\w+])\+?\d{1,3}?[ .-]?\(?\d{2,4}\)?[ .-]?\d{3}[ .-]?\d{3,4}\b")),
)


def _luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    # only numbers that could be cards: other long digit runs are left to the phone rule
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group()


def redact(text: str) -> str:
    """``text`` with e-mails, phone/card/SSN numbers, IPs and secrets replaced by ``[KIND]``."""
    for kind, pattern in PATTERNS:
        text = pattern.sub(_card if kind == "CARD" else f"[{kind}]", text)
    return text
