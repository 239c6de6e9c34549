"""Great Expectations, the way the platform runs it: ephemeral, quiet, row-level results.

Importing GX and building a context takes seconds; validating a batch then takes
milliseconds. So one ephemeral context per process (:func:`batch_definition`,
cached per asset) and one suite per dataset kind; :func:`failed_rows` runs a suite
with ``result_format="COMPLETE"`` over a pandas frame and says, for every row,
which expectations it broke (``unexpected_index_list``). Used by document
validation (ingestion and online writes) and by continuous evaluation.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any

import pandas as pd

__all__ = ["batch_definition", "expectation_name", "failed_rows"]

_lock = threading.Lock()  # a GX context is not meant for concurrent validations


def expectation_name(kind: str, column: str) -> str:
    return f"{kind}({column})"


@functools.cache
def _context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.core", "great_expectations.datasource"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # the validator reads this to decide on its tqdm "Calculating Metrics" bars
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


@functools.cache
def batch_definition(source: str, asset: str) -> Any:
    """A whole-dataframe batch definition of a pandas asset in the process' ephemeral context."""
    with _lock:
        data_source = _context().data_sources.add_pandas(source)
        return data_source.add_dataframe_asset(asset).add_batch_definition_whole_dataframe("batch")


def failed_rows(definition: Any, suite: Any, frame: pd.DataFrame) -> list[list[str]]:
    """For each row of ``frame``, the expectations (``expect_...(column)``) it broke.

    A table-level expectation that fails (e.g. the columns) marks every row. An
    expectation that could not run at all is a bug, not bad data: RuntimeError.
    """
    failed: list[list[str]] = [[] for _ in range(len(frame))]
    if frame.empty:
        return failed
    frame = frame.reset_index(drop=True)
    with _lock:
        batch = definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format="COMPLETE")
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        column = cfg.kwargs.get("column")
        name = expectation_name(cfg.type, str(column) if column is not None else "table")
        exc = (r.exception_info or {}).get("exception_message")
        if exc:
            raise RuntimeError(f"validation could not run {name}: {exc}")
        if column is None:  # table-level
            for row in failed:
                row.append(name)
            continue
        for idx in r.result.get("unexpected_index_list") or []:
            pos = int(idx["index"] if isinstance(idx, dict) else idx)
            failed[pos].append(name)
    return failed
