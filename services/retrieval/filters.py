"""The API's retrieval filter, as a Qdrant filter that always pins the caller's tenant."""

from __future__ import annotations

import math
import re
from typing import Any

from qdrant_client import models

from services.errors import InvalidRequestError

_FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
_TOP_LEVEL_FIELDS = ("doc_id", "source")
_RANGE_OPS = ("gte", "gt", "lte", "lt")
_ALLOWED = (
    'a condition is a string, integer, number or boolean (exact match), {"any": [values]} '
    '(any of; all strings or all integers), or {"gte"|"gt"|"lte"|"lt": number} (range)'
)


def build_filter(filter: dict[str, Any] | None, tenant: str) -> models.Filter:
    """The Qdrant filter of a search: ``tenant == tenant`` AND each condition of ``filter``.

    ``filter`` maps a field to a condition. The field is ``doc_id``, ``source`` or a
    metadata field name (stored under ``metadata.<field>``; letters, digits, ``_``, ``-``).
    The condition is a scalar (exact match), ``{"any": [...]}`` or a range
    ``{"gte"/"gt"/"lte"/"lt": number}``.

    Raises:
        InvalidRequestError: with ``param="filter"`` or ``param="filter.<field>"``.
    """
    must: list[models.Condition] = [match_field("tenant", tenant)]
    if filter is None:
        return models.Filter(must=must)
    if not isinstance(filter, dict):
        raise InvalidRequestError(
            f"filter must be a JSON object mapping a field to a condition; got {type(filter).__name__}",
            param="filter",
            value=filter,
        )
    for field, cond in filter.items():
        must.append(_condition(field, cond))
    return models.Filter(must=must)


def _condition(field: Any, cond: Any) -> models.FieldCondition:
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
        return models.FieldCondition(key=key, match=models.MatchValue(value=cond))
    if isinstance(cond, float):
        if not math.isfinite(cond):
            raise bad(f"got {cond!r}")
        return models.FieldCondition(key=key, range=models.Range(gte=cond, lte=cond))
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
        return models.FieldCondition(key=key, match=models.MatchAny(any=values))
    if cond and set(cond) <= set(_RANGE_OPS):
        for op, v in cond.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise bad(f"range bound {op!r} must be a finite number; got {v!r}")
        return models.FieldCondition(key=key, range=models.Range(**{op: float(v) for op, v in cond.items()}))
    raise bad(f"unknown operator(s) {sorted(map(str, cond))}")


def match_field(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))
