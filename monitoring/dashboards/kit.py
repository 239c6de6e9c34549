"""Building blocks for the llmops dashboards: PromQL snippets, panels, the dashboard shell.

Every panel and query points at the ``$datasource`` variable; every dashboard carries
the ``datasource``, ``model`` and ``tenant`` variables, the ``llmops`` tag and a link
menu to the other llmops dashboards. Used by :mod:`monitoring.dashboards.build` and
:mod:`monitoring.dashboards.quality`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, timeseries
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import prometheus as prometheus_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dashboard_m
from grafana_foundation_sdk.models import prometheus as prometheus_m

__all__ = [
    "DATASOURCE",
    "MODEL",
    "MODEL_VALUES",
    "NO_RESULTS",
    "RATE",
    "TENANT",
    "TENANT_VALUES",
    "Panel",
    "Section",
    "bargauge_panel",
    "dashboard",
    "quantile",
    "quantiles",
    "rate",
    "sel",
    "stat_panel",
    "timeseries_panel",
]

TAGS = ["llmops"]
DATASOURCE = dashboard_m.DataSourceRef(type_val="prometheus", uid="${datasource}")

RATE = "[$__rate_interval]"
MODEL = 'model=~"$model"'
TENANT = 'tenant=~"$tenant"'
# where the model and tenant variables take their values from (the serving dashboards)
MODEL_VALUES = "label_values(ray_llmops_requests_total, model)"
TENANT_VALUES = "label_values(ray_llmops_cost_usd_total, tenant)"
# Ray needs positive bucket bounds, so zero results land in le="0.5" (COUNT_BUCKETS in
# monitoring/metrics.py); Ray 2.60 formats bounds as "0.5", "1.0", ..., "+Inf".
NO_RESULTS = 'le="0.5"'

Panel = timeseries.Panel | stat.Panel | bargauge.Panel
Section = tuple[str, Sequence[Panel]]


# --- PromQL helpers ------------------------------------------------------------------


def sel(metric: str, *matchers: str) -> str:
    """``metric{m1, m2}``, or the bare name without matchers."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def rate(metric: str, by: str, *matchers: str, window: str = RATE) -> str:
    """Per-second rate summed over Ray's per-process series."""
    return f"sum by ({by}) (rate({sel(metric, *matchers)}{window}))"


def quantile(q: float, histogram: str, by: Sequence[str], *matchers: str, window: str = RATE) -> str:
    """``q``-quantile of a histogram from its exact ``_bucket`` series."""
    labels = ", ".join(("le", *by))
    return (
        f"histogram_quantile({q}, sum by ({labels}) (rate({sel(histogram + '_bucket', *matchers)}{window})))"
    )


def quantiles(
    qs: Sequence[float], histogram: str, by: Sequence[str], *matchers: str, window: str = RATE
) -> list[tuple[str, str]]:
    """One (expr, legend) per quantile: legend ``p50`` or ``{{label}} p50``."""
    prefix = " ".join(f"{{{{{label}}}}}" for label in by)
    return [
        (quantile(q, histogram, by, *matchers, window=window), f"{prefix} p{round(q * 100)}".strip())
        for q in qs
    ]


# --- panel helpers ----------------------------------------------------------------


def _targets(
    queries: Sequence[tuple[str, str]], *, instant: bool = False, heatmap: bool = False
) -> list[Any]:
    out = []
    for i, (expr, legend) in enumerate(queries):
        target = (
            prometheus_b.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
        ).datasource(DATASOURCE)
        target = target.instant() if instant else target.range()
        if heatmap:
            target = target.format(prometheus_m.PromQueryFormat.HEATMAP)
        out.append(target)
    return out


def timeseries_panel(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str,
    *,
    width: int = 12,
    stacking: common_m.StackingMode = common_m.StackingMode.NONE,
    max_value: float | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .fill_opacity(10 if stacking == common_m.StackingMode.NONE else 40)
        .stacking(common_b.StackingConfig().mode(stacking))
        .legend(
            common_b.VizLegendOptions()
            .show_legend(True)
            .display_mode(common_m.LegendDisplayMode.TABLE)
            .placement(common_m.LegendPlacement.BOTTOM)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common_m.TooltipDisplayMode.MULTI)
            .sort(common_m.SortOrder.DESCENDING)
        )
    )
    return panel.max(max_value) if max_value is not None else panel


def stat_panel(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str,
    *,
    width: int = 12,
    instant: bool = False,
    text_mode: common_m.BigValueTextMode = common_m.BigValueTextMode.VALUE_AND_NAME,
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=instant))
        .unit(unit)
        .span(width)
        .height(5)
        .text_mode(text_mode)
        .color_mode(common_m.BigValueColorMode.NONE)
        .graph_mode(common_m.BigValueGraphMode.NONE if instant else common_m.BigValueGraphMode.AREA)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def bargauge_panel(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str,
    *,
    width: int = 12,
    heatmap: bool = False,
) -> bargauge.Panel:
    return (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=True, heatmap=heatmap))
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .orientation(common_m.VizOrientation.HORIZONTAL)
        .display_mode(common_m.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


# --- dashboard helpers ------------------------------------------------------------


def _query_variable(name: str, label: str, query: str) -> dashboard_b.QueryVariable:
    return (
        dashboard_b.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dashboard_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_m.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard_m.VariableOption(selected=True, text="All", value="$__all"))
    )


def dashboard(
    uid: str,
    title: str,
    description: str,
    sections: Sequence[Section],
    *,
    model_values: str = MODEL_VALUES,
    tenant_values: str = TENANT_VALUES,
    time_from: str = "now-1h",
    refresh: str = "30s",
) -> dict[str, Any]:
    board = (
        dashboard_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .timezone("browser")
        .time(time_from, "now")
        .refresh(refresh)
        .tooltip(dashboard_m.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard_b.DashboardLink("llmops dashboards")
            .type(dashboard_m.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(dashboard_b.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(_query_variable("model", "Model", model_values))
        .with_variable(_query_variable("tenant", "Tenant", tenant_values))
    )
    panel_id = 0
    for row_title, panels in sections:
        panel_id += 1
        # Expanded rows stay empty: Grafana strips panels nested in a non-collapsed row.
        board = board.with_row(dashboard_b.Row(row_title).id(panel_id).collapsed(False))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    # The SDK's objects serialize through ``to_json``; round-trip to plain dicts.
    model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return model
