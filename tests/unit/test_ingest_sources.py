"""Reading files into documents: every format, id rules, and rows that become quarantine records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.ingest.sources import RowFields, discover, html_to_text, read_documents
from pipelines.ingest.validate import QuarantineRecord

pytestmark = pytest.mark.unit


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("Plain text document.\nSecond line.", encoding="utf-8")
    (tmp_path / "sub" / "b.md").write_text("# Title\n\nSome *markdown* body.", encoding="utf-8")
    (tmp_path / "page.html").write_text(
        "<html><head><title> The  Page </title><style>p{color:red}</style>"
        "<script>var hidden = 1;</script></head><body><h1>Heading</h1>"
        "<p>First &amp; visible paragraph.</p><noscript>no js</noscript><div>Second<br>line</div>"
        "</body></html>",
        encoding="utf-8",
    )
    rows = [
        json.dumps({"id": "j1", "text": "first row", "lang": "en", "score": 0.5}),
        "{not json",
        json.dumps({"id": "j3", "body": "no text field here"}),
        "",
        json.dumps({"text": "row without an id", "lang": "de"}),
        json.dumps(["a", "list"]),
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "table.csv").write_text("id,text,author\nc1,csv row one,ann\nc2,,bob\n,csv row three,\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    return tmp_path


def by_id(result: object) -> dict[str, object]:
    return {d.doc_id: d for d in result.documents}  # type: ignore[attr-defined]


def test_directory_reads_every_supported_format(corpus: Path) -> None:
    result = read_documents(corpus)
    docs = by_id(result)
    assert result.files == 5  # .bin ignored
    assert set(docs) == {"a.txt", "sub/b.md", "page.html", "j1", "rows.jsonl#5", "c1", "c2", "table.csv#3"}
    a = docs["a.txt"]
    assert a.text == "Plain text document.\nSecond line."
    assert a.metadata == {"path": "a.txt", "format": "txt"}
    assert a.source.endswith("a.txt")
    assert docs["sub/b.md"].metadata == {"path": "sub/b.md", "format": "md"}


def test_html_visible_text_and_title(corpus: Path) -> None:
    page = by_id(read_documents(corpus / "page.html"))["page.html"]
    assert page.metadata["title"] == "The Page"
    assert page.metadata["format"] == "html"
    assert "First & visible paragraph." in page.text
    assert "Heading" in page.text
    assert "Second\nline" in page.text
    for hidden in ("hidden", "color:red", "no js", "The Page"):
        assert hidden not in page.text


def test_html_to_text_collapses_whitespace() -> None:
    title, text = html_to_text("<p>  a \n  b </p><p>c</p><template>x</template>")
    assert title == ""
    assert text == "a b\nc"


def test_jsonl_rows_ids_metadata_and_quarantine(corpus: Path) -> None:
    result = read_documents(corpus / "rows.jsonl")
    docs = by_id(result)
    assert docs["j1"].text == "first row"
    assert docs["j1"].metadata == {"lang": "en", "score": 0.5, "path": "rows.jsonl", "format": "jsonl"}
    # no id: path + line number (counted from 1, blank lines included)
    assert docs["rows.jsonl#5"].text == "row without an id"
    failed = {(q.row, q.failed) for q in result.quarantined}
    assert failed == {
        (2, ("json_parse_error",)),
        (3, ("text_field_missing",)),
        (6, ("json_not_object",)),
    }
    missing = next(q for q in result.quarantined if q.row == 3)
    assert isinstance(missing, QuarantineRecord)
    assert missing.doc_id == "j3"
    assert missing.record == {"id": "j3", "body": "no text field here"}
    assert json.loads(json.dumps(missing.to_json()))["failed"] == ["text_field_missing"]


def test_csv_rows_empty_cells_are_not_metadata(corpus: Path) -> None:
    docs = by_id(read_documents(corpus / "table.csv"))
    assert docs["c1"].metadata == {"author": "ann", "path": "table.csv", "format": "csv"}
    assert docs["c2"].text == ""  # left to validation, which names the expectation
    assert docs["table.csv#3"].metadata == {"path": "table.csv", "format": "csv"}


def test_configurable_fields(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"key": 7, "body": "hello", "lang": "en", "extra": 1}) + "\n")
    result = read_documents(f, RowFields(id="key", text="body", metadata=("lang",)))
    (doc,) = result.documents
    assert doc.doc_id == "7"
    assert doc.text == "hello"
    assert doc.metadata == {"lang": "en", "path": "x.jsonl", "format": "jsonl"}


def test_parquet_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {"id": ["p1", None], "text": ["parquet one", "parquet two"], "n": [1, 2], "tags": [["a"], ["b", "c"]]}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    docs = by_id(read_documents(tmp_path / "t.parquet"))
    assert docs["p1"].metadata == {"n": 1, "tags": ["a"], "path": "t.parquet", "format": "parquet"}
    assert docs["t.parquet#2"].text == "parquet two"


def test_glob_ids_relative_to_its_fixed_part(corpus: Path) -> None:
    root, files = discover(str(corpus / "**" / "*.md"))
    assert root == corpus
    assert [f.name for f in files] == ["b.md"]
    assert [d.doc_id for d in read_documents(str(corpus / "**" / "*.md")).documents] == ["sub/b.md"]


def test_undecodable_file_is_quarantined_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    (tmp_path / "good.txt").write_text("fine")
    result = read_documents(tmp_path)
    assert [d.doc_id for d in result.documents] == ["good.txt"]
    assert [q.failed for q in result.quarantined] == [("file_read_error",)]


def test_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_documents(tmp_path / "missing")
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(ValueError, match=r"unsupported file type '\.pdf'"):
        read_documents(tmp_path / "x.pdf")
    with pytest.raises(FileNotFoundError, match="no supported files"):
        read_documents(tmp_path)
