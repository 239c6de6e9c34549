"""``llmops ingest`` when the embedded store is held by a running platform: it submits over HTTP."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops.config import load_config
from pipelines.ingest.cli import add_parser
from services.retrieval.config import VectorStoreConfig
from services.retrieval.store import open_store

pytestmark = pytest.mark.unit


class FakePlatform(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, Any, str | None]] = []
    max_docs = 3  # larger batches get 413, like a small gateway body limit

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body, self.headers.get("Authorization")))
        n = len(body["documents"])
        if n > self.max_docs:
            self._reply(413, {"error": {"message": "too large", "type": "invalid_request_error"}})
            return
        self._reply(
            200,
            {"collection": "kb", "documents": n, "chunks_written": 2 * n, "stale_deleted": 0, "unchanged": 0},
        )

    def do_DELETE(self) -> None:
        self.requests.append(("DELETE", self.path, None, self.headers.get("Authorization")))
        self._reply(200, {"collection": "kb", "id": "x", "chunks_deleted": 2})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def platform_url() -> Iterator[str]:
    FakePlatform.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePlatform)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="llmops")
    add_parser(parser.add_subparsers(dest="command"), load_config)
    return parser.parse_args(argv)


def setup(tmp_path: Path, url: str) -> tuple[Path, Path]:
    host, port = url.removeprefix("http://").split(":")
    data = tmp_path / "data"
    cfg = tmp_path / "llmops.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(data),
                "gateway": {"host": host, "port": int(port)},
                "retrieval": {"collections": [{"name": "kb", "required_metadata": ["lang"]}]},
            }
        )
    )
    src = tmp_path / "docs.jsonl"
    rows = [{"id": f"d{i}", "text": f"document number {i}", "lang": "en"} for i in range(7)]
    rows.append({"id": "nolang", "text": "has no lang"})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    return cfg, src


def test_locked_store_falls_back_to_the_running_platform(
    tmp_path: Path, platform_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, src = setup(tmp_path, platform_url)
    monkeypatch.setenv("LLMOPS_API_KEY", "sk-test")
    # hold the embedded store the way a running `llmops up` does
    with open_store(VectorStoreConfig(), str(tmp_path / "data")):
        args = parse(["ingest", str(src), "--config", str(cfg), "--no-progress", "--json"])
        assert args.func(args) == 0
    out = capsys.readouterr()
    assert "held by another process" in out.err
    summary = json.loads(out.out)
    assert summary["store"].startswith(f"running platform at {platform_url} (its embedded Qdrant Edge at ")
    assert (summary["docs_seen"], summary["docs_written"], summary["chunks_written"]) == (9, 7, 14)
    assert summary["quarantined"] == 2  # the bad JSON line and the row without lang, validated here
    posts = [r for r in FakePlatform.requests if r[0] == "POST"]
    assert all(p[1] == "/v1/collections/kb/documents" and p[3] == "Bearer sk-test" for p in posts)
    accepted = [
        d["id"] for p in posts if len(p[2]["documents"]) <= FakePlatform.max_docs for d in p[2]["documents"]
    ]
    assert accepted == [f"d{i}" for i in range(7)]  # 413 halves a batch until it fits; order kept
    first = posts[-1][2]["documents"][0]
    assert set(first) == {"id", "text", "metadata", "source"} and first["metadata"]["lang"] == "en"
    qfile = Path(summary["quarantine_file"])
    assert qfile.parent == tmp_path / "data" / "quarantine"
    assert len(qfile.read_text().splitlines()) == 2


def test_delete_through_url_quotes_the_id(
    tmp_path: Path, platform_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = setup(tmp_path, platform_url)
    args = parse(["ingest", "--delete", "notes/a b.md", "--url", platform_url, "--config", str(cfg)])
    assert args.func(args) == 0
    assert FakePlatform.requests == [("DELETE", "/v1/collections/kb/documents/notes%2Fa%20b.md", None, None)]
    assert "running platform at" in capsys.readouterr().out


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["ingest"])
    assert args.func(args) == 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"retrieval": {"collections": [{"name": "a"}, {"name": "b"}]}}))
    args = parse(["ingest", str(tmp_path), "--config", str(cfg)])
    assert args.func(args) == 2
    assert "name a collection (--collection); configured: a, b" in capsys.readouterr().err
