"""Validation of inference-table records with Great Expectations before they are scored.

One suite over a pandas frame of a file's records: the columns the scorer reads
exist (a table-level expectation: a file without them is quarantined whole), ids,
times, model, tenant, prompt and completion are not null, request ids are unique,
prompt and completion lengths are within bounds, and latency and token counts are
not negative. Records that break an expectation go to the quarantine table with
the expectations' names; the rest are scored.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from services.gx import batch_definition, failed_rows

__all__ = ["REQUIRED_COLUMNS", "RecordValidator"]

#: what the scorer reads
REQUIRED_COLUMNS: tuple[str, ...] = (
    "request_id",
    "ts",
    "tenant",
    "model",
    "version",
    "engine",
    "status",
    "prompt",
    "completion",
    "chunk_texts",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
)
_NOT_NULL = ("request_id", "ts", "model", "tenant", "prompt", "completion")
_NOT_NEGATIVE = ("latency_ms", "prompt_tokens", "completion_tokens")
_BLANK_IS_NULL = frozenset({"request_id", "model", "tenant", "prompt"})


class RecordValidator:
    """Runs the suite; :meth:`check` says per row which expectations it broke."""

    def __init__(self, max_prompt_chars: int, max_completion_chars: int) -> None:
        import great_expectations as gx
        import great_expectations.expectations as gxe

        expectations: list[Any] = [
            gxe.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False),
            *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in _NOT_NULL),
            gxe.ExpectColumnValuesToBeUnique(column="request_id"),
            gxe.ExpectColumnValueLengthsToBeBetween(column="prompt", min_value=1, max_value=max_prompt_chars),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="completion", min_value=0, max_value=max_completion_chars
            ),
            *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in _NOT_NEGATIVE),
        ]
        self.suite = gx.ExpectationSuite(name="continuous-eval-records", expectations=expectations)
        self._definition = batch_definition("llmops_continuous_eval", "inference_records")

    def check(self, frame: pd.DataFrame) -> list[list[str]]:
        """The broken expectations of each row (empty: valid)."""
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            # row-level expectations cannot run on absent columns: the file fails as a whole
            name = f"expect_table_columns_to_match_set(missing: {', '.join(missing)})"
            return [[name] for _ in range(len(frame))]
        # a blank id, model, tenant or prompt counts as missing; a blank completion is an
        # answer (a bad one: its scores say so)
        view = pd.DataFrame(
            {c: frame[c].map(_blank_to_none) if c in _BLANK_IS_NULL else frame[c] for c in REQUIRED_COLUMNS}
        )
        return failed_rows(self._definition, self.suite, view.astype(object))


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value
