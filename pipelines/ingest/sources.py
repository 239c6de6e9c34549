"""Read files into :class:`Document` s: a directory (recursively), a glob, or one file.

Whole-file formats, one document per file, ``doc_id`` = the path relative to
the directory (or glob root) read:

- ``.txt``, ``.md`` / ``.markdown``: the text as is; metadata ``path``, ``format``.
- ``.html`` / ``.htm``: the visible text (no scripts, styles or head), the
  ``<title>`` in metadata ``title``.

Row formats, one document per row: ``.jsonl``, ``.csv``, ``.parquet``. Which
fields hold the id, the text and the metadata is configurable
(:class:`RowFields`); a row without an id gets ``<path>#<row>`` (row counted
from 1). Rows that cannot be read (bad JSON, no text field) become
:class:`QuarantineRecord` s instead of stopping the run.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from pipelines.ingest.validate import QuarantineRecord
from services.retrieval.types import Document

TEXT_FORMATS = {".txt": "txt", ".md": "md", ".markdown": "md"}
HTML_FORMATS = {".html": "html", ".htm": "html"}
ROW_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
SUPPORTED = {**TEXT_FORMATS, **HTML_FORMATS, **ROW_FORMATS}
_MAGIC = re.compile(r"[*?[]")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class RowFields:
    """Field names of row formats; ``metadata`` None: every other field."""

    id: str = "id"
    text: str = "text"
    metadata: tuple[str, ...] | None = None


@dataclass
class ReadResult:
    documents: list[Document] = field(default_factory=list)
    quarantined: list[QuarantineRecord] = field(default_factory=list)
    files: int = 0


# -- finding files ----------------------------------------------------------------------
def discover(path: str | Path) -> tuple[Path, list[Path]]:
    """(root that ids are relative to, supported files in sorted order) for a dir, glob or file.

    Raises ``FileNotFoundError`` when nothing matches and ``ValueError`` for a
    single file of an unsupported type.
    """
    text = str(path)
    if _MAGIC.search(text):
        parts = Path(text).parts
        fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if _MAGIC.search(p))]]
        root = Path(*fixed) if fixed else Path(".")
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        files = [f for f in files if f.suffix.lower() in SUPPORTED]
        if not files:
            raise FileNotFoundError(f"no supported files match {text!r} ({', '.join(sorted(SUPPORTED))})")
        return root, files
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED)
        if not files:
            raise FileNotFoundError(f"no supported files under {text!r} ({', '.join(sorted(SUPPORTED))})")
        return p, files
    if p.is_file():
        if p.suffix.lower() not in SUPPORTED:
            raise ValueError(
                f"unsupported file type {p.suffix!r} for {text!r}; use {', '.join(sorted(SUPPORTED))}"
            )
        return p.parent, [p]
    raise FileNotFoundError(f"no such file or directory: {text!r}")


def read_documents(path: str | Path, fields: RowFields | None = None) -> ReadResult:
    """Every document under ``path`` (see the module docstring), plus what was quarantined."""
    root, files = discover(path)
    out = ReadResult(files=len(files))
    for item in iter_files(root, files, fields or RowFields()):
        if isinstance(item, Document):
            out.documents.append(item)
        else:
            out.quarantined.append(item)
    return out


def iter_files(root: Path, files: Iterable[Path], fields: RowFields) -> Iterator[Document | QuarantineRecord]:
    for f in files:
        rel = f.relative_to(root).as_posix() if f.is_relative_to(root) else f.as_posix()
        fmt = SUPPORTED[f.suffix.lower()]
        try:
            if fmt in ("txt", "md"):
                yield Document(rel, f.read_text(encoding="utf-8"), {"path": rel, "format": fmt}, str(f))
            elif fmt == "html":
                title, text = html_to_text(f.read_text(encoding="utf-8"))
                meta: dict[str, Any] = {"path": rel, "format": fmt}
                if title:
                    meta["title"] = title
                yield Document(rel, text, meta, str(f))
            else:
                yield from _rows(f, rel, fmt, fields)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            yield QuarantineRecord(None, ("file_read_error",), str(f), None, f"{type(exc).__name__}: {exc}")


# -- HTML -------------------------------------------------------------------------------
class _TextExtractor(HTMLParser):
    _SKIP = {"script", "style", "noscript", "template", "head", "svg"}
    _BLOCK = {
        "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
        "footer", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "title",
    }  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._pre = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag == "pre":
            self._pre += 1
        elif tag in self._SKIP:
            self._skip += 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "pre" and self._pre:
            self._pre -= 1
        elif tag in self._SKIP and self._skip:
            self._skip -= 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            # source line breaks are spaces in HTML, except inside <pre>
            self.parts.append(data if self._pre else _SPACES.sub(" ", data))


def html_to_text(html: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page; whitespace collapsed, one line per block."""
    p = _TextExtractor()
    p.feed(html)
    p.close()
    lines = (" ".join(line.split()) for line in "".join(p.parts).splitlines())
    return " ".join("".join(p.title).split()), "\n".join(line for line in lines if line)


# -- rows -------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """A JSON-safe copy of a cell value (NaN → None, dates → ISO strings, others → str)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    if hasattr(value, "tolist"):  # numpy arrays
        return jsonable(value.tolist())
    return str(value)


def row_to_document(
    row: Mapping[str, Any], fields: RowFields, rel: str, fmt: str, n: int, source: str
) -> Document | QuarantineRecord:
    """One row as a document, or a quarantine record when it has no usable text."""
    text = row.get(fields.text)
    raw_id = jsonable(row.get(fields.id))
    doc_id = str(raw_id) if raw_id not in (None, "") else f"{rel}#{n}"
    record = {str(k): jsonable(v) for k, v in row.items()}
    if fields.text not in row or text is None or (isinstance(text, float) and math.isnan(text)):
        return QuarantineRecord(
            doc_id, ("text_field_missing",), source, n, f"no '{fields.text}' field", record
        )
    if isinstance(text, bool | Mapping | list | tuple):
        return QuarantineRecord(
            doc_id,
            ("text_field_not_string",),
            source,
            n,
            f"'{fields.text}' is a {type(text).__name__}",
            record,
        )
    names = (
        fields.metadata
        if fields.metadata is not None
        else [k for k in row if k not in (fields.id, fields.text)]
    )
    meta = {k: record[k] for k in names if k in record and record[k] is not None and record[k] != ""}
    meta.setdefault("path", rel)
    meta.setdefault("format", fmt)
    return Document(doc_id, str(text), meta, source)


def _rows(f: Path, rel: str, fmt: str, fields: RowFields) -> Iterator[Document | QuarantineRecord]:
    if fmt == "jsonl":
        with f.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield QuarantineRecord(
                        None, ("json_parse_error",), str(f), n, str(exc), line.strip()[:2000]
                    )
                    continue
                if not isinstance(row, dict):
                    yield QuarantineRecord(
                        None,
                        ("json_not_object",),
                        str(f),
                        n,
                        f"a JSON {type(row).__name__}",
                        line.strip()[:2000],
                    )
                    continue
                yield row_to_document(row, fields, rel, fmt, n, str(f))
    elif fmt == "csv":
        with f.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for n, row in enumerate(reader, start=1):
                # DictReader puts surplus cells under None; a short row has None values
                clean = {k: v for k, v in row.items() if k is not None and v is not None}
                yield row_to_document(clean, fields, rel, fmt, n, str(f))
    else:
        yield from _parquet_rows(f, rel, fields)


def _parquet_rows(f: Path, rel: str, fields: RowFields) -> Iterator[Document | QuarantineRecord]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow comes with ray[data]
        raise ValueError("reading .parquet needs pyarrow (pip install pyarrow)") from exc
    n = 0
    try:
        pf = pq.ParquetFile(f)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for a corrupt file
        raise ValueError(f"not a readable Parquet file: {exc}") from exc
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield row_to_document(row, fields, rel, "parquet", n, str(f))
