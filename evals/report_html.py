"""``report.html``: one self-contained page (inline CSS and SVG, no script, no CDN) per run.

Sections: the run's facts; per metric its mean with the 95 % CI, measured and
unmeasured counts, a histogram of item scores and, with a baseline, the paired
delta and the gate's verdict; per-category bars; the worst items. Every text
from the data is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from typing import Any

from evals.report import RUN_FACTS

BINS = 10
WORST = 15
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .6em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f6f6}.num{text-align:right;font-variant-numeric:tabular-nums}
.fail{color:#b00020;font-weight:600}.pass{color:#1b7a2f;font-weight:600}.muted{color:#777}
svg{vertical-align:middle}.bar{fill:#4a78c2}.base{fill:#bbb}code{font-size:.9em}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _f(v: Any, digits: int = 4) -> str:
    return "unmeasured" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def histogram_svg(values: list[float], width: int = 220, height: int = 48) -> str:
    """Bars of the item scores over [0, 1] (values outside are clamped)."""
    counts = [0] * BINS
    for v in values:
        counts[min(BINS - 1, max(0, int(v * BINS)))] += 1
    top = max(counts) or 1
    w = width / BINS
    bars = "".join(
        f'<rect class="bar" x="{i * w + 1:.1f}" y="{height - c / top * height:.1f}" width="{w - 2:.1f}" '
        f'height="{c / top * height:.1f}"><title>{i / BINS:.1f}-{(i + 1) / BINS:.1f}: {c}</title></rect>'
        for i, c in enumerate(counts)
    )
    return f'<svg width="{width}" height="{height}" role="img" aria-label="score histogram">{bars}</svg>'


def _bar(value: float | None, width: int = 160) -> str:
    if value is None:
        return '<span class="muted">unmeasured</span>'
    v = min(1.0, max(0.0, value))
    return (
        f'<svg width="{width}" height="12"><rect class="base" width="{width}" height="12"/>'
        f'<rect class="bar" width="{v * width:.1f}" height="12"/></svg> {value:.3f}'
    )


def render_html(report: dict[str, Any], gate_result: dict[str, Any]) -> str:
    keys = list(report["metrics"])
    facts = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(report.get(k))}</td></tr>" for k in ("suite", *RUN_FACTS, "created")
    )
    verdict = (
        '<span class="pass">passed</span>' if gate_result["passed"] else '<span class="fail">FAILED</span>'
    )
    rows = []
    for k in keys:
        m, g = report["metrics"][k], gate_result["metrics"][k]
        vals = [float(r[k]) for r in report["items"] if isinstance(r.get(k), int | float)]
        d = g.get("delta")
        delta = (
            f"{_f(d['mean'])} [{_f(d['ci_low'])}, {_f(d['ci_high'])}] over {d['paired_items']}" if d else "—"
        )
        status = (
            '<span class="pass">ok</span>'
            if g["passed"]
            else f'<span class="fail">{_e("; ".join(g["reasons"]))}</span>'
        )
        rows.append(
            f"<tr><td><code>{_e(k)}</code></td><td class=num>{_f(m['mean'])}</td>"
            f"<td class=num>{_f(m['ci_low'])} to {_f(m['ci_high'])}</td><td class=num>{m['measured']}</td>"
            f"<td class=num>{m['unmeasured']}</td><td>{histogram_svg(vals)}</td><td>{delta}</td><td>{status}</td></tr>"
        )
    cats = []
    for cat, per in report.get("by_category", {}).items():
        cells = "".join(f"<td>{_bar(per.get(k, {}).get('mean'))}</td>" for k in keys)
        n = max((per[k].get("n", 0) for k in per), default=0)
        cats.append(f"<tr><td>{_e(cat or '(none)')}</td><td class=num>{n}</td>{cells}</tr>")
    first = keys[0] if keys else None
    scored = [r for r in report["items"] if first and isinstance(r.get(first), int | float)]
    worst = sorted(scored, key=lambda r: r[first])[:WORST] if first else []
    worst_rows = "".join(
        f"<tr><td><code>{_e(r['id'])}</code></td><td class=num>{_f(r[first], 3)}</td>"
        f"<td>{_e(str(r.get('input', ''))[:300])}</td><td>{_e(str(r.get('answer') or r.get('error') or '')[:300])}</td></tr>"
        for r in worst
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llmops eval: {_e(report["suite"])} / {_e(report.get("model"))}</title>
<style>{_CSS}</style></head><body>
<h1>{_e(report["suite"])} / {_e(report.get("model"))}: gate {verdict}</h1>
<table>{facts}</table>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>mean</th><th>95% CI</th><th>measured</th><th>unmeasured</th>
<th>item scores (0 to 1)</th><th>delta vs baseline [95% CI]</th><th>gate</th></tr>{"".join(rows)}</table>
<p class="muted">Unmeasured items (failed requests, metrics that could not be computed) are counted, never averaged.</p>
<h2>By category</h2>
<table><tr><th>category</th><th>items</th>{"".join(f"<th>{_e(k)}</th>" for k in keys)}</tr>{"".join(cats)}</table>
<h2>Worst items by {_e(first)}</h2>
<table><tr><th>id</th><th>score</th><th>input</th><th>answer</th></tr>{worst_rows}</table>
</body></html>
"""
