"""What continuous evaluation has done: the files it scored and its cumulative metrics.

Exactly once, per inference-table file (files never change once visible):

1. a file's scores are written to ``scores/<hour>/<same name>`` (hidden name, then
   renamed: a torn write is never seen), with the file's skipped and quarantined
   counts in the Parquet metadata; the scores file is the file's *done marker*;
2. the checkpoint (this module) is replaced atomically with the file added and its
   counts folded into the cumulative :class:`~monitoring.eval_metrics.EvalState`;
3. the state is PUT to the Pushgateway (idempotent).

A crash before 2 leaves a scores file the checkpoint does not list: the next run
folds that file in from its scores file without scoring it again (no judge call is
paid twice). A crash before 1 leaves nothing: the file is scored on the next run.
So no record is scored twice, counted twice, or skipped.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitoring.eval_metrics import EvalState

__all__ = ["Checkpoint"]

FORMAT = 1


@dataclass
class Checkpoint:
    path: Path
    #: inference-table files done, relative to the table root ("hour=.../part-....parquet")
    files: set[str] = field(default_factory=set)
    state: EvalState = field(default_factory=EvalState)
    commits: int = 0
    updated: float = 0.0

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """The checkpoint at ``path`` (a fresh one when there is none)."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(
                f"{path}: the continuous-eval checkpoint is not valid JSON ({exc}); it is only ever "
                "replaced whole, so this is not a torn write: inspect it, or move it away to start over"
            ) from None
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: checkpoint format {data.get('format')!r}, expected {FORMAT}")
        return cls(
            path,
            set(data["files"]),
            EvalState(data["state"]),
            int(data.get("commits", 0)),
            float(data.get("updated", 0.0)),
        )

    def save(self) -> None:
        """Replace the checkpoint file atomically (write, fsync, rename, fsync the folder)."""
        self.commits += 1
        self.updated = time.time()
        data: dict[str, Any] = {
            "format": FORMAT,
            "files": sorted(self.files),
            "state": self.state.to_json(),
            "commits": self.commits,
            "updated": self.updated,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".checkpoint-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def prune(self, existing: set[str]) -> None:
        """Forget files retention deleted from the table (they can never come back)."""
        self.files &= existing
