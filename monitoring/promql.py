"""Pull the PromQL out of dashboards and rule files, and make it evaluable.

Tests and tooling use this to check every query the platform ships: that it parses
(``promtool check rules`` on the substituted expressions) and that it returns series
against a Prometheus scraping the platform.

* :func:`dashboard_queries` — every panel target ``expr`` (rows included) and every
  query-variable query in Grafana dashboard JSON files.
* :func:`rule_queries` — every ``expr`` in Prometheus rule files (record and alert).
* :func:`substitute` — replaces Grafana variables with values Prometheus accepts;
  a ``label_values(metric, label)`` variable query becomes the selector to evaluate.
* :func:`operands` — the metric-bearing operands of an expression, split at top-level
  ``and``/``or``/``unless`` and comparisons. An alert's full expression returns nothing
  while all is well; its operands (``error_ratio`` in ``error_ratio > 0.05``) must not.

No PromQL library is used: the small tokenizer below only knows what splitting needs
(strings, comments, brackets, operators, grouping modifiers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["Query", "dashboard_queries", "operands", "rule_queries", "substitute", "variables"]

QueryKind = Literal["panel", "variable", "record", "alert"]


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it came from.

    ``title`` is the panel title, ``variable <name>`` for a template variable, or the
    rule's ``record``/``alert`` name.
    """

    source: str
    title: str
    expr: str
    kind: QueryKind = "panel"


# --- extraction -------------------------------------------------------------------


def _files(paths: Iterable[str | Path], patterns: tuple[str, ...]) -> Iterator[Path]:
    """Files as given; a directory stands for its files matching ``patterns``."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for pattern in patterns for f in p.glob(pattern))
        else:
            yield p


def _panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Every panel, depth first: a collapsed row holds its panels in ``panels``."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or ())


def dashboard_queries(paths: Iterable[str | Path]) -> list[Query]:
    """Every target ``expr`` of every panel and every query-variable query.

    Args:
        paths: Grafana dashboard JSON files, or directories of them (``*.json``).

    Raises:
        OSError, json.JSONDecodeError: a file cannot be read or is not JSON.
    """
    out: list[Query] = []
    for path in _files(paths, ("*.json",)):
        model = json.loads(path.read_text())
        # Legacy (schema < 16) dashboards keep panels under rows[].panels.
        top = [*model.get("panels", ()), *model.get("rows", ())]
        for panel in _panels(top):
            for target in panel.get("targets") or ():
                if isinstance(target.get("expr"), str):
                    out.append(Query(str(path), str(panel.get("title", "")), target["expr"]))
        for var in (model.get("templating") or {}).get("list", ()):
            if var.get("type") != "query":
                continue
            query = var.get("query")
            if isinstance(query, Mapping):  # newer Grafana: {"query": "...", "refId": ...}
                query = query.get("query")
            if isinstance(query, str) and query.strip():
                out.append(Query(str(path), f"variable {var.get('name', '')}", query, "variable"))
    return out


def rule_queries(paths: Iterable[str | Path]) -> list[Query]:
    """Every ``expr`` of every recording and alerting rule (``groups[].rules[]``).

    Args:
        paths: Prometheus rule files, or directories of them (``*.yaml``, ``*.yml``).

    Raises:
        OSError, yaml.YAMLError: a file cannot be read or is not YAML.
        ValueError: a file is not shaped like a rule file.
    """
    out: list[Query] = []
    for path in _files(paths, ("*.yaml", "*.yml")):
        doc = yaml.safe_load(path.read_text()) or {}
        if not isinstance(doc, Mapping) or not isinstance(doc.get("groups", []), list):
            raise ValueError(f"{path}: expected a mapping with a 'groups' list, got {type(doc).__name__}")
        for group in doc.get("groups", []):
            for rule in group.get("rules") or ():
                kind: QueryKind = "alert" if "alert" in rule else "record"
                out.append(Query(str(path), str(rule.get(kind, "")), str(rule["expr"]), kind))
    return out


# --- substitution -----------------------------------------------------------------

# $name, ${name}, ${name:format}, [[name]] (Grafana's variable syntaxes).
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*)\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((.*)\)\s*$", re.DOTALL)


def variables(expr: str) -> set[str]:
    """Names of the Grafana variables an expression uses (``$model`` -> ``model``)."""
    return {a or b or c for a, b, c in _VARIABLE.findall(expr)}


def substitute(
    expr: str,
    rate_interval: str = "1m",
    range_: str = "5m",
    values: Mapping[str, str] | None = None,
) -> str:
    """An expression Prometheus can evaluate, Grafana variables replaced.

    ``$model`` and ``$tenant`` (any syntax) become ``.*`` (the dashboards' "All"
    value), ``$__rate_interval`` and ``$__interval`` become ``rate_interval``,
    ``$__range`` becomes ``range_``; ``values`` adds or overrides variables.
    A ``label_values(metric, label)`` variable query becomes ``metric`` (the selector
    whose series carry the values), ``label_values(label)`` becomes ``{label!=""}``
    and ``query_result(expr)`` becomes ``expr``.

    Raises:
        ValueError: the expression uses a variable with no value.
    """
    table = {
        "model": ".*",
        "tenant": ".*",
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": range_,
        **(values or {}),
    }
    unknown = variables(expr) - table.keys()
    if unknown:
        raise ValueError(f"no value for variable(s) {sorted(unknown)} in {expr!r}")
    expr = _VARIABLE.sub(lambda m: table[m.group(1) or m.group(2) or m.group(3)], expr)
    if m := _LABEL_VALUES.match(expr):
        args = _split_top_level(m.group(1), ",")
        if len(args) == 1:
            return f'{{{args[0].strip()}!=""}}'
        return args[0].strip()
    if m := _QUERY_RESULT.match(expr):
        return m.group(1).strip()
    return expr


# --- tokenizer ----------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
  | (?P<ident>[a-zA-Z_:][\w:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=!,@])
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int
    depth: int  # bracket depth before this token (an opener and its closer share it)


def _tokens(expr: str) -> list[_Token]:
    out: list[_Token] = []
    depth, pos = 0, 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize PromQL at offset {pos}: {expr[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        if kind == "close":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {m.group()!r} at offset {pos} in {expr!r}")
        if kind not in ("space", "comment"):
            out.append(_Token(kind, m.group(), m.start(), m.end(), depth))
        if kind == "open":
            depth += 1
        pos = m.end()
    if depth:
        raise ValueError(f"{depth} unclosed bracket(s) in {expr!r}")
    return out


def _strip_comments(expr: str) -> str:
    """``expr`` without ``# ...`` comments, so operands can be embedded in other queries."""
    out, pos = [], 0
    for m in _TOKEN.finditer(expr):
        if m.lastgroup == "comment":
            out.append(expr[pos : m.start()])
            pos = m.end()
    return "".join(out) + expr[pos:]


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split at ``sep`` tokens outside brackets and strings."""
    parts, start = [], 0
    for t in _tokens(text):
        if t.depth == 0 and t.kind == "op" and t.text == sep:
            parts.append(text[start : t.start])
            start = t.end
    parts.append(text[start:])
    return parts


# --- operands -----------------------------------------------------------------------

_SET_OPERATORS = frozenset({"and", "or", "unless"})
_COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
# Modifiers that may follow a binary operator; the ones that take a label list.
_MODIFIERS = frozenset({"bool", "on", "ignoring", "group_left", "group_right"})
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
# Aggregation operators may take ``by (...)`` before their parentheses: ``sum by (le) (x)``.
_AGGREGATIONS = frozenset(
    {"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
     "quantile", "count_values", "limitk", "limit_ratio"}
)  # fmt: skip
_KEYWORDS = (
    _SET_OPERATORS | _MODIFIERS | _LABEL_LIST_KEYWORDS | _AGGREGATIONS | {"offset", "inf", "nan", "atan2"}
)
_UNWRAP_FUNCTIONS = frozenset({"absent", "absent_over_time"})


def _matching_close(tokens: list[_Token], i: int) -> int:
    """Index of the closer matching the opener at ``tokens[i]``."""
    for j in range(i + 1, len(tokens)):
        if tokens[j].kind == "close" and tokens[j].depth == tokens[i].depth:
            return j
    raise ValueError(f"unbalanced brackets after offset {tokens[i].start}")


def _has_selector(tokens: list[_Token]) -> bool:
    """Whether the tokens contain a metric selector (a name or a ``{...}`` matcher)."""
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if t.kind == "open" and t.text == "{":
            return True
        if t.kind == "ident":
            word = t.text.lower()
            if word in _LABEL_LIST_KEYWORDS and nxt is not None and nxt.text == "(":
                i = _matching_close(tokens, i + 1) + 1  # skip the label list
                continue
            is_call = nxt is not None and nxt.text == "("
            if word not in _KEYWORDS and not is_call:
                return True
        i += 1
    return False


def _strip_parens(expr: str) -> str:
    """Remove brackets that wrap the whole expression: ``((a > 1))`` -> ``a > 1``."""
    while True:
        tokens = _tokens(expr)
        if not tokens or tokens[0].text != "(" or _matching_close(tokens, 0) != len(tokens) - 1:
            return expr.strip()
        expr = expr[tokens[0].end : tokens[-1].start]


def _unwrap_call(expr: str) -> str | None:
    """``X`` when ``expr`` is exactly ``absent(X)`` or ``absent_over_time(X)``."""
    tokens = _tokens(expr)
    if (
        len(tokens) >= 3
        and tokens[0].kind == "ident"
        and tokens[0].text in _UNWRAP_FUNCTIONS
        and tokens[1].text == "("
        and _matching_close(tokens, 1) == len(tokens) - 1
    ):
        return expr[tokens[1].end : tokens[-1].start]
    return None


def _split_binary(expr: str) -> list[str]:
    """Split at top-level set operators and comparisons, dropping their modifiers."""
    tokens = _tokens(expr)
    parts: list[str] = []
    start, i = 0, 0
    while i < len(tokens):
        t = tokens[i]
        is_set = t.kind == "ident" and t.text.lower() in _SET_OPERATORS
        if t.depth == 0 and (is_set or (t.kind == "op" and t.text in _COMPARISONS)):
            parts.append(expr[start : t.start])
            i += 1
            # bool, on(...), ignoring(...), group_left(...), group_right(...)
            while i < len(tokens) and tokens[i].kind == "ident" and tokens[i].text.lower() in _MODIFIERS:
                if i + 1 < len(tokens) and tokens[i + 1].text == "(":
                    i = _matching_close(tokens, i + 1)
                i += 1
            start = tokens[i].start if i < len(tokens) else len(expr)
            continue
        i += 1
    parts.append(expr[start:])
    return parts


def operands(expr: str) -> list[str]:
    """The operands of ``expr`` that contain a metric selector, split recursively.

    Splits at top-level (outside brackets and strings) ``and``, ``or``, ``unless``
    and comparisons (``== != > < >= <=``, with ``bool``/``on``/``ignoring``/
    ``group_left``/``group_right`` modifiers), strips wrapping brackets and unwraps
    ``absent(X)``/``absent_over_time(X)`` to ``X``. Pure numbers (``14.4 * 0.005``)
    are dropped. An expression without such operators is its own single operand.

    Raises:
        ValueError: the expression has unbalanced brackets or an unknown character.
    """
    expr = _strip_parens(_strip_comments(expr))
    inner = _unwrap_call(expr)
    if inner is not None:
        return operands(inner)
    parts = _split_binary(expr)
    if len(parts) == 1:
        return [expr] if expr and _has_selector(_tokens(expr)) else []
    return [operand for part in parts for operand in operands(part)]
