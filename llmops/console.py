"""Lifecycle output of long-running commands, for people or for log pipelines.

Text (default): the lines people read, flushed one by one even when stdout is a
file or a pipe (systemd, ``> up.log``, a container). JSON (``--log-format json``):
one object per line with ``ts``, ``level``, ``event`` and ``message``, and the
command's Python logging in the same shape, for Kubernetes log pipelines.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _now(),
            "level": record.levelname.lower(),
            "event": "log",
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class Console:
    """Where a command's lifecycle lines go; :meth:`event` writes one."""

    def __init__(self, fmt: LogFormat = "text", out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.fmt = fmt
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        for stream in (self.out, self.err):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(line_buffering=True)

    def route_logging(self) -> None:
        """In JSON mode, this process' Python logging (warnings and up) as JSON lines too."""
        if self.fmt != "json":
            return
        handler = logging.StreamHandler(self.out)
        handler.setFormatter(_JsonFormatter())
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.WARNING)

    def event(self, event: str, message: str, level: str = "info", **fields: Any) -> None:
        """One lifecycle line: ``message`` for people, the event and fields as well for machines."""
        if self.fmt == "json":
            line = {"ts": _now(), "level": level, "event": event, "message": message, **fields}
            print(json.dumps(line, ensure_ascii=False, default=str), file=self.out, flush=True)
            return
        stream = self.err if level in ("warning", "error") else self.out
        print(message, file=stream, flush=True)

    def error(self, message: str, event: str = "error", **fields: Any) -> None:
        self.event(event, message if self.fmt == "json" else f"error: {message}", "error", **fields)
