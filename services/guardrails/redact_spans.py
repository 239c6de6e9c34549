"""Replacing found spans with their label: ``[EMAIL_ADDRESS]``.

Overlapping or touching spans merge into one replacement (labelled by the
longest), so a card number inside a phone-like match is one ``[CREDIT_CARD]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.guardrails.base import Finding

__all__ = ["merge_spans", "redact_spans"]


def merge_spans(findings: Sequence[Finding]) -> list[tuple[int, int, str]]:
    """Sorted, non-overlapping ``(start, end, label)``; a merged span keeps its longest part's label."""
    out: list[tuple[int, int, str, int]] = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.end <= f.start:
            continue
        if out and f.start < out[-1][1]:
            s, e, label, longest = out[-1]
            if f.end - f.start > longest:
                label, longest = f.label, f.end - f.start
            out[-1] = (s, max(e, f.end), label, longest)
        else:
            out.append((f.start, f.end, f.label, f.end - f.start))
    return [(s, e, label) for s, e, label, _ in out]


def redact_spans(text: str, findings: Sequence[Finding]) -> str:
    """``text`` with every finding's span replaced by ``[LABEL]``."""
    parts, pos = [], 0
    for s, e, label in merge_spans(findings):
        parts.append(text[pos:s])
        parts.append(f"[{label}]")
        pos = e
    parts.append(text[pos:])
    return "".join(parts)
