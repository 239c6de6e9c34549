"""Reports of a scored run (``report.json``, ``junit.xml``, ``report.html``) and the regression gate.

**Gate.** For each metric with a threshold, the run is paired with the
baseline's items by id and the per-item delta gets a paired bootstrap 95 % CI.
A metric regresses only when the CI lies wholly on the worse side of 0 *and*
the mean delta is worse than the threshold's ``max_regression``. A metric whose
mean is below its ``min`` fails too. NaN items (either side) are left out of the
pairing and reported as unmeasured.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from xml.etree import ElementTree as ET

from evals.metrics.aggregate import paired_delta, summarize
from evals.suite import Threshold


class MetricLike(Protocol):
    """What the report reads of a metric (:class:`evals.suite.MetricSpec` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def higher_is_better(self) -> bool: ...
    @property
    def threshold(self) -> Threshold | None: ...


class SuiteLike(Protocol):
    """What the report reads of a suite: :class:`evals.suite.Suite`, or a suite assembled in
    code (the safety suites, ``pipelines.safety``)."""

    @property
    def name(self) -> str: ...
    @property
    def metrics(self) -> Sequence[MetricLike]: ...


REPORT_VERSION = 1


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _clean(v: Any) -> Any:
    """NaN -> None, recursively: report.json is strict JSON."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def build_report(suite: SuiteLike, rows: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """The whole report: run facts, per-metric summaries with CIs, per-category means, items."""
    metrics: dict[str, Any] = {}
    cats: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for spec in suite.metrics:
        vals = [_num(r.get(spec.key)) for r in rows]
        s = summarize(vals)
        metrics[spec.key] = {**s.as_dict(), "higher_is_better": spec.higher_is_better}
        for r, v in zip(rows, vals, strict=True):
            cats[r.get("category") or ""][spec.key].append(v)
    # SQuAD 2.0's HasAns / NoAns splits, as the official script reports them
    splits = {
        split: {
            spec.key: summarize(
                [_num(r.get(spec.key)) for r in rows if r.get("has_answer") is want]
            ).as_dict()
            for spec in suite.metrics
            if spec.name in ("squad_em", "squad_f1")
        }
        for split, want in (("HasAns", True), ("NoAns", False))
    }
    by_category = {
        c: {k: summarize(v).as_dict() | {"n": len(v)} for k, v in per.items()}
        for c, per in sorted(cats.items())
    }
    return _clean(
        {
            "report_version": REPORT_VERSION,
            "suite": suite.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **run,
            "items_total": len(rows),
            "items_failed": sum(1 for r in rows if r.get("error")),
            "metrics": metrics,
            "by_category": by_category,
            **({"splits": splits} if any(splits.values()) else {}),
            "items": rows,
        }
    )


def gate(suite: SuiteLike, report: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Per metric: ``passed``, why, and (with a baseline) the paired delta and its CI."""
    out: dict[str, Any] = {"passed": True, "metrics": {}}
    base_items = {str(r["id"]): r for r in (baseline or {}).get("items", [])}
    for spec in suite.metrics:
        key, th = spec.key, spec.threshold
        res: dict[str, Any] = {"passed": True, "reasons": []}
        mean = report["metrics"][key]["mean"]
        if th is not None and th.min is not None and (mean is None or mean < th.min):
            res["passed"] = False
            res["reasons"].append(f"mean {mean} below min {th.min}")
        if baseline is not None:
            now = {str(r["id"]): r for r in report["items"]}
            # items that have the metric on both sides (a combined report's items each carry
            # only their own suite's metrics: pipelines.safety)
            ids = [i for i in now if i in base_items and key in now[i] and key in base_items[i]]
            cur = [_num(now[i].get(key)) for i in ids]
            old = [_num(base_items[i].get(key)) for i in ids]
            sign = 1.0 if spec.higher_is_better else -1.0
            d = paired_delta([sign * c for c in cur], [sign * o for o in old])
            res["delta"] = d.as_dict() | {"paired_items": len(ids)}
            tolerated = th.max_regression if th is not None else 0.0
            if th is not None and d.measured and d.ci_high < 0 and -d.mean > tolerated:
                res["passed"] = False
                res["reasons"].append(
                    f"regressed by {-d.mean:.4f} (95% CI of the delta {d.ci_low:.4f}..{d.ci_high:.4f} "
                    f"excludes 0; tolerated {tolerated})"
                )
        out["metrics"][key] = res
        out["passed"] = out["passed"] and res["passed"]
    return _clean(out)


#: what a run records about itself (report.json, junit.xml properties, report.html)
RUN_FACTS = (
    "model",
    "url",
    "engine",
    "model_version",
    "config_digest",
    "server_platform_version",
    "platform_version",
    "suite_digest",
    "items_total",
    "items_failed",
)


def junit_xml(report: dict[str, Any], gate_result: dict[str, Any]) -> str:
    """One test case per metric; a failed gate is a failure naming why."""
    cases = gate_result["metrics"]
    suite_el = ET.Element(
        "testsuite",
        name=f"llmops-eval-{report['suite']}",
        tests=str(len(cases)),
        failures=str(sum(1 for c in cases.values() if not c["passed"])),
    )
    props = ET.SubElement(suite_el, "properties")
    for k in RUN_FACTS:
        ET.SubElement(props, "property", name=k, value=str(report.get(k)))
    for key, res in cases.items():
        m = report["metrics"][key]
        case = ET.SubElement(suite_el, "testcase", classname=report["suite"], name=key)
        ET.SubElement(case, "system-out").text = json.dumps(m)
        if not res["passed"]:
            ET.SubElement(case, "failure", message="; ".join(res["reasons"]))
    return ET.tostring(suite_el, encoding="unicode", xml_declaration=True)


def write_reports(out_dir: Path, report: dict[str, Any], gate_result: dict[str, Any]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    from evals.report_html import render_html

    paths = [out_dir / "report.json", out_dir / "junit.xml", out_dir / "report.html"]
    paths[0].write_text(json.dumps({**report, "gate": gate_result}, indent=1) + "\n")
    paths[1].write_text(junit_xml(report, gate_result))
    paths[2].write_text(render_html(report, gate_result))
    return paths
