"""Building blocks of the generated Prometheus rules (see :mod:`monitoring.rules`).

The rule model (:class:`Rule`, :class:`Group`, :func:`alert`), the multiwindow,
multi-burn-rate machinery (:class:`BurnWindow`, :func:`burn_alerts`), selectors and the
number / ``le`` formatting every rule module shares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PAGE_WINDOWS",
    "TICKET_WINDOWS",
    "VALUE",
    "VALUE_DURATION",
    "VALUE_PCT",
    "BurnSpec",
    "BurnWindow",
    "Group",
    "Rule",
    "alert",
    "burn_alerts",
    "burn_expr",
    "indent",
    "label",
    "le_label",
    "num",
    "pct",
    "record_name",
    "sel",
]


@dataclass(frozen=True)
class BurnWindow:
    """One burn-rate condition: both windows' error ratios above ``factor`` x budget."""

    long: str
    short: str
    factor: float
    # How long the 30-day budget lasts at this burn rate (for the descriptions).
    budget_gone_in: str


# Google SRE workbook, "Alerting on SLOs", multiwindow multi-burn-rate alerts (30-day SLO):
# 14.4x for 1h spends 2% of the budget, 6x for 6h 5%, 3x for 1d 10%, 1x for 3d 10%.
PAGE_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow("1h", "5m", 14.4, "about 2 days"),
    BurnWindow("6h", "30m", 6.0, "5 days"),
)
TICKET_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow("1d", "2h", 3.0, "10 days"),
    BurnWindow("3d", "6h", 1.0, "30 days"),
)

# Prometheus alert template snippets (kept out of f-strings' brace syntax).
VALUE_PCT = "{{ $value | humanizePercentage }}"
VALUE_DURATION = "{{ $value | humanizeDuration }}"
VALUE = "{{ $value }}"


def label(name: str) -> str:
    """The alert template for a label's value: ``{{ $labels.<name> }}``."""
    return "{{ $labels." + name + " }}"


# --- formatting helpers -----------------------------------------------------------------


def num(x: float) -> str:
    """A number as PromQL/YAML text without float noise: 0.005, 14.4, 6 (not 6.0)."""
    x = round(float(x), 12)
    return str(int(x)) if x.is_integer() else repr(x)


def le_label(bound: float) -> str:
    """The ``le`` label value Ray exports for a histogram bound: ``2.0`` -> ``"2.0"``.

    Ray's OpenTelemetry Prometheus exporter writes bounds with Python's ``str(float)``
    (Prometheus 3 normalizes ``le`` to the same float form on ingestion). The
    Pushgateway re-exposes pushed bounds in Go's shortest form (``1.0`` as ``"1"``), which
    is the same text for every bound that is not a whole number (``0.3`` -> ``"0.3"``).
    """
    return repr(float(bound))


def pct(x: float) -> str:
    """0.995 -> '99.5%'."""
    return f"{num(x * 100)}%"


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def sel(job: str, *matchers: str) -> str:
    """A label matcher block scoped to ``job``: ``{job="x",a="b"}``."""
    return "{" + ",".join((f'job="{job}"', *matchers)) + "}"


def record_name(sli: str, window: str) -> str:
    return f"llmops:slo_{sli}_errors:ratio_rate{window}"


# --- rule model ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rule plus the YAML comment rendered above it (not part of the rule itself)."""

    body: dict[str, Any]
    comment: str = ""


@dataclass(frozen=True)
class Group:
    name: str
    rules: list[Rule] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rules": [r.body for r in self.rules]}


def alert(
    name: str,
    expr: str,
    *,
    for_: str,
    severity: str,
    summary: str,
    description: str,
    base_url: str,
    labels: dict[str, str] | None = None,
    comment: str = "",
) -> Rule:
    return Rule(
        {
            "alert": name,
            "expr": expr,
            "for": for_,
            "labels": {"severity": severity, **(labels or {})},
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": f"{base_url}/{name}.md",
            },
        },
        comment,
    )


# --- SLO burn-rate alerts ---------------------------------------------------------------


def burn_expr(
    sli: str, budget: float, windows: Sequence[BurnWindow], guard: Callable[[str], str] | None = None
) -> str:
    """``(long > t and short > t) or ...``; ``guard(window)``, when given, adds a third
    condition to each branch (e.g. a minimum sample count over the long window)."""
    branches = []
    for w in windows:
        threshold = f"({num(w.factor)} * {num(budget)})"
        extra = f"\n  and\n{indent(guard(w.long))}" if guard is not None else ""
        branches.append(
            f"(\n  {record_name(sli, w.long)} > {threshold}\n"
            f"  and\n  {record_name(sli, w.short)} > {threshold}{extra}\n)"
        )
    return "\nor\n".join(branches)


@dataclass(frozen=True)
class BurnSpec:
    """One SLO's pair of burn-rate alerts (fast pages, slow is a ticket)."""

    sli: str  # the recording rules' llmops:slo_<sli>_errors:ratio_rate<window>
    title: str  # "TTFT" (summaries and comments)
    objective: float
    bad_text: str  # "<value> {bad_text} over the last ..."
    objective_text: str
    fast: str
    slow: str
    fast_windows: Sequence[BurnWindow] = PAGE_WINDOWS
    slow_windows: Sequence[BurnWindow] = TICKET_WINDOWS
    fast_for: str = "2m"
    slow_for: str = "15m"
    subject: str = ""  # appended to the summary's title, e.g. " of {{ $labels.model }}"
    guard: Callable[[str], str] | None = None  # see burn_expr
    note: str = ""  # an extra comment line (why these windows)


def burn_alerts(spec: BurnSpec, base_url: str) -> list[Rule]:
    budget = round(1 - spec.objective, 12)
    rules = []
    for name, windows, severity, for_, kind in (
        (spec.fast, spec.fast_windows, "critical", spec.fast_for, "fast"),
        (spec.slow, spec.slow_windows, "warning", spec.slow_for, "slow"),
    ):
        conditions = " or ".join(
            f"{w.long} and {w.short} ratios > {num(w.factor)}x budget ({num(w.factor * budget)})"
            for w in windows
        )
        gone = " / ".join(f"{w.budget_gone_in} ({num(w.factor)}x)" for w in windows)
        comment = (
            f"{spec.title} SLO, {kind} burn (multiwindow, multi-burn-rate; Google SRE workbook).\n"
            f"Error budget = 1 - {num(spec.objective)} = {num(budget)}. Fires when the {conditions}:\n"
            f"the long window proves the burn is significant, the short one that it is still going on."
            + (f"\n{spec.note}" if spec.note else "")
        )
        description = (
            f"{VALUE_PCT} {spec.bad_text} over the last {' or '.join(w.long for w in windows)} "
            f"(the long window of the burning condition). Objective: {spec.objective_text}; "
            f"error budget {pct(budget)}. At this burn rate the whole 30-day budget is gone in "
            f"{gone}."
        )
        rules.append(
            alert(
                name,
                burn_expr(spec.sli, budget, windows, spec.guard),
                for_=for_,
                severity=severity,
                labels={"slo": spec.sli},
                summary=f"{spec.title} error budget{spec.subject} burning {kind}: "
                + " or ".join(f"> {num(w.factor)}x over {w.long}" for w in windows),
                description=description,
                base_url=base_url,
                comment=comment,
            )
        )
    return rules
