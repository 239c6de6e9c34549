"""`llmops eval run` as a subprocess against a real HTTP server speaking the OpenAI chat API.

The server answers from a table (gold answers, or "unanswerable" for everything),
so the expected scores are known exactly; it counts requests, so caching and
resuming are visible.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from evals.suite import items, load_suite

pytestmark = pytest.mark.unit
LIMIT = 40
LLMOPS = str(Path(sys.executable).parent / "llmops")  # the installed console script


class ChatServer:
    def __init__(self) -> None:
        self.answers: dict[str, str] = {}  # question -> answer; missing: "unanswerable"
        self.requests = 0
        self.fail_questions: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/v1/models/m":
                    card = {"id": "m", "object": "model", "created": 0, "owned_by": "llmops"}
                    extra = {"engine": "extractive", "version": "v7", "config_digest": "abcd1234abcd1234"}
                    self._send(200, {**card, **extra, "platform_version": "9.9.9"})
                else:
                    err = {
                        "message": "no such model",
                        "type": "invalid_request_error",
                        "code": "model_not_found",
                    }
                    self._send(404, {"error": err})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                user = body["messages"][-1]["content"]
                question = user.rsplit("Question: ", 1)[-1]
                if question in outer.fail_questions:
                    self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                    return
                text = outer.answers.get(question, "unanswerable")
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
                    },
                )

            def _send(self, status: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def server() -> Iterator[ChatServer]:
    s = ChatServer()
    yield s
    s.httpd.shutdown()


def _run(server: ChatServer, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [LLMOPS, "eval", "run", "qa", "--model", "m", "--url", server.url]
    cmd += ["--limit", str(LIMIT), "--out", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_run_scores_caches_and_gates(server: ChatServer, tmp_path: Path) -> None:
    qa = list(items(load_suite("qa"), LIMIT))
    no_answer = sum(1 for i in qa if not i.expected)
    assert 0 < no_answer < LIMIT

    # 1. always "unanswerable": EM is exactly the share of unanswerable items
    p = _run(server, tmp_path / "a")
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["metrics"]["squad_em"]["mean"] == pytest.approx(no_answer / LIMIT)
    assert report["items_total"] == LIMIT and report["model"] == "m" and report["suite_digest"]
    # what the server says it runs under the name
    assert report["engine"] == "extractive" and report["model_version"] == "v7"
    assert report["config_digest"] == "abcd1234abcd1234" and report["server_platform_version"] == "9.9.9"
    splits = report["splits"]  # the official script's HasAns / NoAns split
    assert splits["NoAns"]["squad_em"]["mean"] == 1.0 and splits["NoAns"]["squad_em"]["measured"] == no_answer
    assert splits["HasAns"]["squad_em"]["mean"] == 0.0
    assert server.requests == LIMIT
    junit = ET.parse(tmp_path / "a" / "junit.xml").getroot()
    assert junit.get("tests") == "2" and junit.get("failures") == "0"

    # 2. the same run again sends nothing: every response comes from the cache
    assert _run(server, tmp_path / "a").returncode == 0
    assert server.requests == LIMIT

    # 3. a better model as the baseline, then the always-no-answer one against it: a regression
    server.answers = {i.input: i.expected[0] for i in qa if i.expected}
    assert _run(server, tmp_path / "good").returncode == 0
    good = json.loads((tmp_path / "good" / "report.json").read_text())
    assert good["metrics"]["squad_em"]["mean"] == 1.0
    base = str(tmp_path / "good" / "report.json")
    p = _run(server, tmp_path / "a", "--baseline", base, "--fail-on-regression")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAILED: regressed by" in p.stdout
    page = (tmp_path / "a" / "report.html").read_text()
    assert 'gate <span class="fail">FAILED</span>' in page and "regressed by" in page
    assert "<script" not in page and "src=" not in page and "href=" not in page  # self-contained
    gated = json.loads((tmp_path / "a" / "report.json").read_text())["gate"]
    assert gated["passed"] is False and gated["metrics"]["squad_em"]["delta"]["ci_high"] < 0
    # the same comparison without --fail-on-regression reports it but exits 0
    assert _run(server, tmp_path / "a", "--baseline", base).returncode == 0


def test_failed_requests_are_unmeasured_and_retried_next_run(server: ChatServer, tmp_path: Path) -> None:
    qa = list(items(load_suite("qa"), LIMIT))
    server.fail_questions = {qa[0].input, qa[1].input}
    server.answers = {qa[2].input: "<script>alert(1)</script>"}
    p = _run(server, tmp_path / "r")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["squad_em"]
    assert m["unmeasured"] == 2 and m["measured"] == LIMIT - 2  # not counted as wrong answers
    page = (tmp_path / "r" / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page  # answers are escaped
    sent = server.requests
    server.fail_questions = set()
    assert _run(server, tmp_path / "r").returncode == 0
    assert server.requests - sent == 2  # only the failed ones are sent again
    m = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["squad_em"]
    assert m["unmeasured"] == 0


def test_bad_usage_exits_2_with_a_message(server: ChatServer, tmp_path: Path) -> None:
    p = subprocess.run(
        [LLMOPS, "eval", "run", "nope", "--model", "m", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "no suite 'nope'" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"suite": "summarize", "items": []}))
    p = _run(server, tmp_path / "x", "--baseline", str(bad))
    assert p.returncode == 2 and "report of suite 'summarize'" in p.stderr
    unknown = [
        LLMOPS,
        "eval",
        "run",
        "qa",
        "--model",
        "nope",
        "--url",
        server.url,
        "--out",
        str(tmp_path / "u"),
    ]
    p = subprocess.run(unknown, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "serves no model 'nope'" in p.stderr and server.requests == 0


def test_citation_metrics_read_the_rag_response() -> None:
    from evals.harness import Response, score_item
    from evals.suite import MetricSpec

    suite = load_suite("rag")
    item = next(items(suite))
    hit, prec = MetricSpec(name="citation_hit"), MetricSpec(name="context_precision")
    cites = [{"doc_id": item.record["doc_id"]}, {"doc_id": "other-1"}, {"doc_id": "other-2"}, {"doc_id": "x"}]
    r = Response(item.id, "h", "an answer", raw={"citations": cites})
    assert score_item(hit, item, r) == 1.0 and score_item(prec, item, r) == 0.25
    miss = Response(item.id, "h", "an answer", raw={"citations": cites[1:]})
    assert score_item(hit, item, miss) == 0.0
    plain = Response(item.id, "h", "an answer")  # not a RAG response: nothing to score
    assert math.isnan(score_item(hit, item, plain)) and math.isnan(score_item(prec, item, plain))
