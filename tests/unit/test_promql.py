"""monitoring.promql: query extraction, variable substitution and operand splitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from monitoring.promql import Query, dashboard_queries, operands, rule_queries, substitute, variables

pytestmark = pytest.mark.unit


# --- operands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # no operator: the expression is its own operand
        ("sum by (le) (rate(x_bucket[5m]))", ["sum by (le) (rate(x_bucket[5m]))"]),
        ("up", ["up"]),
        # comparisons against pure numbers drop the number side
        ("error_ratio > 14.4 * 0.005", ["error_ratio"]),
        ("error_ratio > (14.4 * (1 - 0.995))", ["error_ratio"]),
        ("0.5 < x", ["x"]),
        ("x >= 1", ["x"]),
        ("x <= 1", ["x"]),
        ("x == 1", ["x"]),
        ("x != 1", ["x"]),
        # label matchers are not operators
        ('x{a=~"b|c", d!="e"} > 0', ['x{a=~"b|c", d!="e"}']),
        ('x{a!~"b"} == y{c="d"}', ['x{a!~"b"}', 'y{c="d"}']),
        # operators inside strings are not operators
        ('x{path="a > b and c"} or y', ['x{path="a > b and c"}', "y"]),
        ("x{path='a == b'} unless y", ["x{path='a == b'}", "y"]),
        # set operators, any case; recursive through wrapping parentheses
        ("a and b or c unless d", ["a", "b", "c", "d"]),
        ("a AND b", ["a", "b"]),
        ("(a > 1) or ((b < 2) and (c))", ["a", "b", "c"]),
        # operators nested in calls or brackets stay put
        ("sum(x > 1) or y", ["sum(x > 1)", "y"]),
        ("rate(x[5m]) / ignoring(code) rate(y[5m]) > 0.1", ["rate(x[5m]) / ignoring(code) rate(y[5m])"]),
        # modifiers after comparison / set operators are dropped
        ("x > bool 1", ["x"]),
        ("x > on(job) group_left(instance) y", ["x", "y"]),
        ("x == ignoring(a, b) group_right y", ["x", "y"]),
        ("x and on() y", ["x", "y"]),
        ("x unless on (model) y", ["x", "y"]),
        # absent / absent_over_time unwrap to their argument
        ('absent(up{job="llmops"})', ['up{job="llmops"}']),
        ("absent_over_time(x[10m]) or y > 3", ["x[10m]", "y"]),
        ("absent((a > 1))", ["a"]),
        # a number-only or call-only expression has no selector
        ("14.4 * 0.005", []),
        ("vector(1)", []),
        ("time() > 0", []),
        # aggregations with by () before the parentheses are not metric names
        ("sum by (model) (rate(x[1m])) > 0", ["sum by (model) (rate(x[1m]))"]),
        ("count without (instance) (up) == 0", ["count without (instance) (up)"]),
        # a bare {...} selector is a selector
        ('{__name__=~"a|b"} > 1', ['{__name__=~"a|b"}']),
        # multi-line with comments (rule files): comments are dropped
        ("# ratio of errors\n  a / b  # per model\n>\n  0.05\n", ["a / b"]),
    ],
)
def test_operands(expr: str, expected: list[str]) -> None:
    assert operands(expr) == expected


def test_operands_of_burn_rate_alert() -> None:
    expr = """
        (
          sum(rate(errors_total[5m])) / sum(rate(requests_total[5m])) > (14.4 * (1 - 0.995))
        and
          sum(rate(errors_total[1h])) / sum(rate(requests_total[1h])) > (14.4 * (1 - 0.995))
        )
    """
    assert operands(expr) == [
        "sum(rate(errors_total[5m])) / sum(rate(requests_total[5m]))",
        "sum(rate(errors_total[1h])) / sum(rate(requests_total[1h]))",
    ]


def test_operands_error_ratio_with_or_zero_is_one_operand() -> None:
    expr = "(sum by (model) (rate(x{s=~'5..'}[1m])) or 0 * sum by (model) (rate(x[1m]))) / sum by (model) (rate(x[1m]))"
    assert operands(expr) == [expr]


@pytest.mark.parametrize("expr", ["sum(rate(x[5m])", "x)", 'x{a="b} > 1'])
def test_operands_rejects_malformed(expr: str) -> None:
    with pytest.raises(ValueError):
        operands(expr)


# --- substitute --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('x{model=~"$model"}', 'x{model=~".*"}'),
        ('x{model=~"${model}"}', 'x{model=~".*"}'),
        ('x{model=~"${model:regex}", tenant=~"[[tenant]]"}', 'x{model=~".*", tenant=~".*"}'),
        ("rate(x[$__rate_interval])", "rate(x[1m])"),
        ("rate(x[$__interval])", "rate(x[1m])"),
        ("increase(x[$__range])", "increase(x[5m])"),
        # $__range does not eat the start of $__rate_interval or $__range_s
        ("rate(x[$__rate_interval]) + increase(x[$__range])", "rate(x[1m]) + increase(x[5m])"),
        ('x{le="0.5", a=~"b$"}', 'x{le="0.5", a=~"b$"}'),  # a regex anchor is not a variable
        # variable queries become the selector to evaluate
        ("label_values(ray_llmops_requests_total, model)", "ray_llmops_requests_total"),
        ('label_values(x{a="b,c", m=~"$model"}, tenant)', 'x{a="b,c", m=~".*"}'),
        ("label_values(model)", '{model!=""}'),
        ("query_result(topk(5, x))", "topk(5, x)"),
    ],
)
def test_substitute(expr: str, expected: str) -> None:
    assert substitute(expr) == expected


def test_substitute_custom_windows_and_values() -> None:
    expr = 'increase(x{model=~"$model", c="$collection"}[$__range]) / rate(x[$__rate_interval])'
    out = substitute(expr, rate_interval="30s", range_="1h", values={"model": "m1", "collection": "docs"})
    assert out == 'increase(x{model=~"m1", c="docs"}[1h]) / rate(x[30s])'


def test_substitute_unknown_variable_raises() -> None:
    with pytest.raises(ValueError, match="instance"):
        substitute('up{instance="$instance"}')


def test_variables() -> None:
    expr = 'x{a=~"$model", b="${tenant:pipe}", c="[[node]]"}[$__rate_interval]'
    assert variables(expr) == {"model", "tenant", "node", "__rate_interval"}
    assert variables('x{a=~"b$"}') == set()


# --- extraction ------------------------------------------------------------------


def _dashboard() -> dict[str, object]:
    return {
        "title": "t",
        "panels": [
            {"type": "row", "title": "open row", "panels": []},
            {"type": "timeseries", "title": "top", "targets": [{"expr": "a", "refId": "A"}, {"expr": "b"}]},
            {"type": "text", "title": "no targets"},
            {
                "type": "row",
                "title": "closed row",
                "collapsed": True,
                "panels": [{"type": "stat", "title": "nested", "targets": [{"expr": 'c{m=~"$model"}'}]}],
            },
            {"type": "table", "title": "not prometheus", "targets": [{"rawSql": "select 1"}]},
        ],
        "rows": [{"panels": [{"title": "legacy", "targets": [{"expr": "d"}]}]}],
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {"name": "model", "type": "query", "query": "label_values(x, model)"},
                {
                    "name": "tenant",
                    "type": "query",
                    "query": {"query": "label_values(y, tenant)", "refId": "V"},
                },
                {"name": "interval", "type": "interval", "query": "1m,5m"},
            ]
        },
    }


def test_dashboard_queries(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_dashboard()))
    src = str(path)
    assert dashboard_queries([path]) == [
        Query(src, "top", "a"),
        Query(src, "top", "b"),
        Query(src, "nested", 'c{m=~"$model"}'),
        Query(src, "legacy", "d"),
        Query(src, "variable model", "label_values(x, model)", "variable"),
        Query(src, "variable tenant", "label_values(y, tenant)", "variable"),
    ]
    # a directory stands for its *.json files
    (tmp_path / "notes.txt").write_text("not a dashboard")
    assert dashboard_queries([tmp_path]) == dashboard_queries([src])


def test_rule_queries(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "g1",
                "rules": [
                    {"record": "llmops:requests:rate5m", "expr": "sum(rate(x[5m]))"},
                    {
                        "alert": "LlmopsHighErrors",
                        "expr": "# burn rate\nerror_ratio\n  > 0.05\n",
                        "for": "5m",
                    },
                ],
            },
            {"name": "empty", "rules": []},
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    assert rule_queries([path]) == [
        Query(str(path), "llmops:requests:rate5m", "sum(rate(x[5m]))", "record"),
        Query(str(path), "LlmopsHighErrors", "# burn rate\nerror_ratio\n  > 0.05\n", "alert"),
    ]
    assert rule_queries([tmp_path]) == rule_queries([path])
    assert operands(rule_queries([path])[1].expr) == ["error_ratio"]


def test_rule_queries_rejects_non_rule_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="groups"):
        rule_queries([path])
