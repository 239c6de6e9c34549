"""The API's retrieval filter, validated into a backend-neutral :class:`FilterSpec`.

Every backend turns the same spec into its own engine's filter (Qdrant Edge's
``qdrant_edge.Filter`` or qdrant-client's ``models.Filter``); the ``post``
filtering strategy evaluates the user's conditions in Python with
:func:`matches`, with the same semantics. The tenant is never a user condition:
it is always inside the engine's filter and can never be widened.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from services.errors import InvalidRequestError
from services.retrieval.types import INJECTION_FLAGGED

_FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
_TOP_LEVEL_FIELDS = ("doc_id", "source")
_RANGE_OPS = ("gte", "gt", "lte", "lt")
_TEXT_TOKEN = re.compile(r"\w+")
_ALLOWED = (
    'a condition is a string, integer, number or boolean (exact match), {"any": [values]} '
    '(any of; all strings or all integers), {"gte"|"gt"|"lte"|"lt": number or ISO 8601 date-time} '
    '(range), or {"text": "words"} (full-text match on a field with a text index)'
)

ConditionKind = Literal["match", "any", "range", "datetime_range", "text"]


@dataclass(frozen=True)
class Condition:
    """One validated condition on a payload key (``doc_id``, ``source`` or ``metadata.<field>``)."""

    key: str
    kind: ConditionKind
    value: Any  # match: scalar; any: list; range: {op: float}; datetime_range: {op: iso str}; text: str


@dataclass(frozen=True)
class FilterSpec:
    """The caller's tenant plus the request's conditions (all must hold).

    ``exclude_flagged`` leaves out chunks the ingestion scan flagged as prompt injection
    (``injection_flagged == true``). Like the tenant it is a platform condition, not a user
    one: every backend puts it inside the engine's filter as a ``must_not`` on an indexed
    field, so a point written before the scan existed (no field) is never excluded.
    """

    tenant: str
    conditions: tuple[Condition, ...] = field(default=())
    exclude_flagged: bool = False

    def tenant_only(self) -> FilterSpec:
        """What the engine applies under the ``post`` strategy: the platform's conditions only."""
        return FilterSpec(self.tenant, exclude_flagged=self.exclude_flagged)


def build_filter(
    filter: dict[str, Any] | None,
    tenant: str,
    text_fields: Collection[str] | None = None,
    exclude_flagged: bool = False,
) -> FilterSpec:
    """The filter of a search: ``tenant == tenant`` AND each condition of ``filter``.

    ``filter`` maps a field to a condition. The field is ``doc_id``, ``source`` or a
    metadata field name (stored under ``metadata.<field>``; letters, digits, ``_``, ``-``).
    The condition is a scalar (exact match), ``{"any": [...]}``, a range
    ``{"gte"/"gt"/"lte"/"lt": number | ISO 8601 date-time}`` or ``{"text": "words"}``.
    ``text_fields`` are the metadata fields with a ``text`` payload index: a text
    condition on any other field is refused (without the index its meaning would
    differ between engines). ``None`` skips that check (stores, tests).

    Raises:
        InvalidRequestError: with ``param="filter"`` or ``param="filter.<field>"``.
    """
    if filter is None:
        return FilterSpec(tenant, exclude_flagged=exclude_flagged)
    if not isinstance(filter, dict):
        raise InvalidRequestError(
            f"filter must be a JSON object mapping a field to a condition; got {type(filter).__name__}",
            param="filter",
            value=filter,
        )
    conditions = tuple(_condition(f, c, text_fields) for f, c in filter.items())
    return FilterSpec(tenant, conditions, exclude_flagged)


def _condition(field: Any, cond: Any, text_fields: Collection[str] | None) -> Condition:
    param = f"filter.{field}"
    if not isinstance(field, str) or not _FIELD.match(field):
        raise InvalidRequestError(
            f"{param}: a filter field is doc_id, source or a metadata field name "
            "(letters, digits, _ and -, at most 64)",
            param=param,
            value=field,
        )
    key = field if field in _TOP_LEVEL_FIELDS else f"metadata.{field}"

    def bad(why: str) -> InvalidRequestError:
        return InvalidRequestError(f"{param}: {why}; {_ALLOWED}", param=param, value=cond)

    if isinstance(cond, bool | int | str):
        return Condition(key, "match", cond)
    if isinstance(cond, float):
        if not math.isfinite(cond):
            raise bad(f"got {cond!r}")
        return Condition(key, "range", {"gte": cond, "lte": cond})
    if not isinstance(cond, dict):
        hint = ' (for any of several values use {"any": [...]})' if isinstance(cond, list) else ""
        raise bad(f"got {type(cond).__name__}{hint}")
    if set(cond) == {"any"}:
        values = cond["any"]
        ok = (
            isinstance(values, list)
            and values
            and (
                all(isinstance(v, str) for v in values)
                or all(isinstance(v, int) and not isinstance(v, bool) for v in values)
            )
        )
        if not ok:
            raise bad(f'"any" must be a non-empty list of strings or of integers; got {values!r}')
        return Condition(key, "any", list(values))
    if set(cond) == {"text"}:
        text = cond["text"]
        if not isinstance(text, str) or not _TEXT_TOKEN.search(text):
            raise bad(f'"text" must be a string with at least one word; got {text!r}')
        if text_fields is not None and field not in text_fields:
            raise InvalidRequestError(
                f"{param}: full-text match needs a text index on {field!r}; add it to the collection's "
                f"payload_indexes as {field}: text",
                param=param,
                value=cond,
            )
        return Condition(key, "text", text)
    if cond and set(cond) <= set(_RANGE_OPS):
        if all(isinstance(v, str) for v in cond.values()):
            for op, v in cond.items():
                if parse_datetime(v) is None:
                    raise bad(f"range bound {op!r} must be an ISO 8601 date-time (e.g. 2024-05-01T00:00:00Z)")
            return Condition(key, "datetime_range", dict(cond))
        for op, v in cond.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise bad(f"range bound {op!r} must be a finite number; got {v!r}")
        return Condition(key, "range", {op: float(v) for op, v in cond.items()})
    raise bad(f"unknown operator(s) {sorted(map(str, cond))}")


def parse_datetime(value: Any) -> datetime | None:
    """An ISO 8601 date or date-time as an aware UTC datetime (naive means UTC); else None."""
    if not isinstance(value, str) or len(value) < 10 or value[4:5] != "-":
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


# -- evaluation in Python (the post-filter strategy) -------------------------------------------------
def _lookup(payload: dict[str, Any], key: str) -> Any:
    value: Any = payload
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _values(raw: Any) -> list[Any]:
    # Qdrant matches a condition against each element of an array field
    return list(raw) if isinstance(raw, list) else ([] if raw is None else [raw])


def _in_range(x: float, bounds: dict[str, Any]) -> bool:
    return all(
        (op == "gte" and x >= b)
        or (op == "gt" and x > b)
        or (op == "lte" and x <= b)
        or (op == "lt" and x < b)
        for op, b in bounds.items()
    )


def _holds(c: Condition, payload: dict[str, Any]) -> bool:
    values = _values(_lookup(payload, c.key))
    if c.kind == "match":
        # booleans only equal booleans, integers only integers (True is not 1 in a payload index)
        return any(type(v) is type(c.value) and v == c.value for v in values)
    if c.kind == "any":
        return any(type(v) is type(c.value[0]) and v in c.value for v in values)
    if c.kind == "range":
        nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        return any(_in_range(x, c.value) for x in nums)
    if c.kind == "datetime_range":
        bounds = {op: parse_datetime(v) for op, v in c.value.items()}
        stamps = [d for d in map(parse_datetime, values) if d is not None]
        return any(_in_range(d, bounds) for d in stamps)  # type: ignore[arg-type]
    # text: every query word among the field's words (Qdrant's word tokenizer, lower-cased)
    want = set(_TEXT_TOKEN.findall(c.value.lower()))
    return any(isinstance(v, str) and want <= set(_TEXT_TOKEN.findall(v.lower())) for v in values)


def matches(spec: FilterSpec, payload: dict[str, Any]) -> bool:
    """Whether a stored payload satisfies the spec (tenant, the flag exclusion and every condition)."""
    if spec.exclude_flagged and payload.get(INJECTION_FLAGGED) is True:
        return False
    return payload.get("tenant") == spec.tenant and all(_holds(c, payload) for c in spec.conditions)
