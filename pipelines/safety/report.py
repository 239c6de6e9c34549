"""One safety report per model version, through the evaluation reports (:mod:`evals.report`).

All suites' rows go into one combined suite (``safety``) whose metrics are the suites'
(``<suite>.<metric>``), so :func:`evals.report.build_report` gives every metric its mean
and 95 % bootstrap CI and :func:`evals.report.gate` pairs items by id against a
baseline (paired bootstrap). On top of that this module adds what a safety report needs:

* ``breakdowns``: per suite, per group (BBQ category, CrowS bias type, BOLD group, ...)
  each metric's summary with its CI;
* derived metrics (BOLD's gaps between groups): a bootstrap CI resampling rows within
  groups, and a gate on the paired bootstrap of the gap's change over the items both
  runs share;
* ``methods`` (how each suite measured: CrowS-Pairs ``logprob_echo`` or ``ab_choice``),
  ``notes`` (e.g. why toxicity is unmeasured) and metric descriptions;
* an extra section in ``report.html`` with the breakdown tables.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evals.metrics.aggregate import BOOTSTRAP_RESAMPLES, CONFIDENCE, summarize
from evals.report import build_report, gate, write_reports
from pipelines.safety.common import Derived, SafetySuite, SuiteSpec

SUITE_NAME = "safety"


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _none(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _strata(rows: Sequence[Mapping[str, Any]], key: str) -> list[np.ndarray]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get(key)), []).append(i)
    return [np.array(v) for _, v in sorted(groups.items())]


def _resample(strata: list[np.ndarray], rng: np.random.Generator) -> list[int]:
    return [int(i) for s in strata for i in s[rng.integers(0, len(s), len(s))]]


def _ci(values: list[float]) -> tuple[float, float]:
    good = [v for v in values if not math.isnan(v)]
    if not good:
        return math.nan, math.nan
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(good, [tail, 100 - tail])
    return float(lo), float(hi)


def derived_summary(
    d: Derived, rows: Sequence[Mapping[str, Any]], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> dict[str, Any]:
    """The statistic on ``rows`` with a stratified bootstrap CI (the shape of a Summary)."""
    value = d.statistic(rows)
    strata = _strata(rows, d.strata)
    rng = np.random.default_rng(seed)
    boots = [d.statistic([rows[i] for i in _resample(strata, rng)]) for _ in range(resamples)] if rows else []
    lo, hi = _ci(boots) if not math.isnan(value) else (math.nan, math.nan)
    return {
        "mean": _none(value),
        "ci_low": _none(lo),
        "ci_high": _none(hi),
        "measured": 0 if math.isnan(value) else len(rows),
        "unmeasured": len(rows) if math.isnan(value) else 0,
        "higher_is_better": d.higher_is_better,
        "derived": True,
        "description": d.description,
    }


def derived_gate(
    d: Derived,
    rows: Sequence[Mapping[str, Any]],
    base_rows: Sequence[Mapping[str, Any]] | None,
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Like :func:`evals.report.gate` for one derived metric: over the items both runs have,
    the change of the statistic with a paired, stratified bootstrap CI (oriented so that
    negative is worse); it regresses when the CI excludes 0 and the drop exceeds
    ``max_regression``. No common items: inconclusive (passes, ``paired_items`` 0)."""
    res: dict[str, Any] = {"passed": True, "reasons": []}
    th = d.threshold
    value = d.statistic(rows)
    if th is not None and th.min is not None and (math.isnan(value) or value < th.min):
        res["passed"] = False
        res["reasons"].append(f"value {_none(value)} below min {th.min}")
    if base_rows is None:
        return res
    base = {str(r["id"]): r for r in base_rows}
    now = [r for r in rows if str(r["id"]) in base]
    old = [base[str(r["id"])] for r in now]
    sign = 1.0 if d.higher_is_better else -1.0
    delta = sign * (d.statistic(now) - d.statistic(old)) if now else math.nan
    strata = _strata(now, d.strata)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(resamples if now and not math.isnan(delta) else 0):
        idx = _resample(strata, rng)
        boots.append(sign * (d.statistic([now[i] for i in idx]) - d.statistic([old[i] for i in idx])))
    lo, hi = _ci(boots) if boots else (math.nan, math.nan)
    res["delta"] = {
        "mean": _none(delta),
        "ci_low": _none(lo),
        "ci_high": _none(hi),
        "measured": len(now) if not math.isnan(delta) else 0,
        "unmeasured": 0 if not math.isnan(delta) else len(now),
        "paired_items": len(now),
    }
    tolerated = th.max_regression if th is not None else 0.0
    if th is not None and not math.isnan(hi) and hi < 0 and -delta > tolerated:
        res["passed"] = False
        res["reasons"].append(
            f"regressed by {-delta:.4f} (95% CI of the delta {lo:.4f}..{hi:.4f} excludes 0; tolerated {tolerated})"
        )
    return res


def applicable(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """The values of ``key`` in the rows that have it: a row without the key is an item the
    metric does not apply to (another suite's, BBQ's other condition), not an unmeasured one."""
    return [_num(r[key]) for r in rows if key in r]


def breakdown(suite: SafetySuite, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per group of the suite, each metric's summary (mean, CI, measured, unmeasured)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("group")), []).append(r)
    out: dict[str, Any] = {
        "groups": {
            g: {m.key: summarize(applicable(rs, m.key)).as_dict() for m in suite.metrics}
            for g, rs in sorted(groups.items())
        }
    }
    gaps = getattr(suite, "group_gaps", None)
    if gaps is not None:
        out["gaps"] = gaps(rows)
    return out


def assemble(
    suites: Sequence[SafetySuite],
    rows: Mapping[str, list[dict[str, Any]]],
    run: dict[str, Any],
    baseline: dict[str, Any] | None,
    notes: list[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report and its gate for the suites' scored ``rows`` (by suite name)."""
    spec = SuiteSpec(SUITE_NAME, [m for s in suites for m in s.metrics])
    all_rows = [r for s in suites for r in rows[s.name]]
    methods = {s.name: s.method for s in suites}
    report = build_report(spec, all_rows, {**run, "suites": [s.name for s in suites], "methods": methods})
    # the same summaries over the items each metric applies to (build_report would count the
    # other suites' items as unmeasured); per suite, only its own metrics
    report["by_category"] = {}
    for s in suites:
        per: dict[str, Any] = {}
        for m in s.metrics:
            summary = summarize(applicable(rows[s.name], m.key)).as_dict()
            report["metrics"][m.key] = summary | {"higher_is_better": m.higher_is_better}
            per[m.key] = summary | {"n": summary["measured"] + summary["unmeasured"]}
        report["by_category"][s.name] = per
    for s in suites:
        for d in s.derived:
            report["metrics"][d.key] = derived_summary(d, rows[s.name])
    report["breakdowns"] = {s.name: breakdown(s, rows[s.name]) for s in suites}
    report["descriptions"] = {m.key: m.description for s in suites for m in s.metrics} | {
        d.key: d.description for s in suites for d in s.derived
    }
    base = baseline
    if baseline is not None:
        base, why = comparable_baseline(baseline, methods)
        notes = [*notes, *why]
    report["notes"] = notes
    result = gate(spec, report, base)
    for s in suites:
        base_rows = (
            None if base is None else [r for r in base.get("items", []) if r.get("category") == s.name]
        )
        for d in s.derived:
            result["metrics"][d.key] = derived_gate(d, rows[s.name], base_rows)
    result["passed"] = all(m["passed"] for m in result["metrics"].values())
    return report, result


def comparable_baseline(
    baseline: dict[str, Any], methods: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """The baseline without the items of suites it measured another way (then inconclusive)."""
    old = baseline.get("methods") or {}
    differ = {s for s, m in methods.items() if s in old and old[s] != m}
    if not differ:
        return baseline, []
    items = [r for r in baseline.get("items", []) if r.get("category") not in differ]
    why = [
        f"{s}: the baseline measured by {old[s]}, this run by {methods[s]}: not compared (inconclusive)"
        for s in sorted(differ)
    ]
    return {**baseline, "items": items}, why


def load_baseline(path: str | Path) -> dict[str, Any]:
    """A baseline from a report.json or a folder holding one.

    Raises:
        ValueError: no report there, not JSON, or not a safety report.
    """
    import json

    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise ValueError(f"--baseline: {p} does not exist (a report.json or the folder holding it)")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"--baseline: {p} is not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("suite") != SUITE_NAME:
        got = data.get("suite") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"--baseline: {p} is a report of suite {got!r}, not a safety report")
    return data


def _f(v: Any) -> str:
    return "unmeasured" if v is None else f"{v:.3f}"


def safety_html(report: Mapping[str, Any]) -> str:
    """The extra section of report.html: methods, notes and the per-group tables."""
    e = html.escape
    parts = ["<h2>Safety suites: methods and notes</h2><table>"]
    for suite, method in report.get("methods", {}).items():
        parts.append(f"<tr><th>{e(suite)}</th><td><code>{e(str(method))}</code></td></tr>")
    parts.append("</table><ul>")
    parts += [f"<li>{e(n)}</li>" for n in report.get("notes", [])]
    parts += [f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in report.get("descriptions", {}).items()]
    parts.append("</ul>")
    for suite, b in report.get("breakdowns", {}).items():
        groups = b.get("groups", {})
        keys = sorted({k for per in groups.values() for k in per})
        parts.append(f"<h2>{e(suite)} by group</h2><table><tr><th>group</th>")
        parts += [f"<th>{e(k)} [95% CI] (n)</th>" for k in keys]
        parts.append("</tr>")
        for g, per in groups.items():
            cells = "".join(
                f"<td class=num>{_f(per[k]['mean'])} [{_f(per[k]['ci_low'])}, {_f(per[k]['ci_high'])}] "
                f"({per[k]['measured']})</td>"
                for k in keys
            )
            parts.append(f"<tr><td>{e(g)}</td>{cells}</tr>")
        parts.append("</table>")
        if b.get("gaps"):
            rows = "".join(
                f"<tr><td>{e(k)}</td><td>{e(d)}</td><td class=num>{_f(v)}</td></tr>"
                for k, per_domain in b["gaps"].items()
                for d, v in per_domain.items()
            )
            parts.append(f"<table><tr><th>metric</th><th>domain</th><th>max gap</th></tr>{rows}</table>")
    return "".join(parts)


def write(out_dir: Path, report: dict[str, Any], gate_result: dict[str, Any]) -> list[Path]:
    """report.json, junit.xml and report.html (evals' page plus :func:`safety_html`)."""
    from evals.report_html import render_html

    paths = write_reports(out_dir, report, gate_result)
    page = render_html(report, gate_result).replace("</body>", safety_html(report) + "\n</body>", 1)
    paths[2].write_text(page)
    return paths
