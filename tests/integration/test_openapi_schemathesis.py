"""/openapi.json against the live platform: the documented examples are accepted, and
Schemathesis (examples, coverage and fuzzing phases) finds no 5xx, no undocumented
status, content type or header, and no response that breaks its documented schema.

Schemathesis runs as its CLI (``python -m schemathesis.cli run``) in a subprocess, with
a fixed seed, one worker and no example database, so a run is repeatable; its JSON
report gives the numbers asserted on. It writes random documents into the
fixture's collections (it learns their names from ``GET /v1/collections``): the HAR
report says which, and they are deleted again, so later tests see the collections as
they were (asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests.integration.conftest import KEYS, Platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "ignored_auth",  # a secured operation without (or with a wrong) key must answer 401
    "unsupported_method",  # an undocumented method is a 405, never a 500
)
SEED = 20261201
MAX_EXAMPLES = 30  # per operation and phase: about 1,000 requests, well under a minute alone
OPERATIONS = 12


def api(platform: Platform, method: str, url: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{platform.url}{url}", headers=AUTH, timeout=120, **kw)


def points(platform: Platform) -> dict[str, int]:
    """Chunks tenant acme has in each collection."""
    r = api(platform, "GET", "/v1/collections")
    assert r.status_code == 200, r.text
    return {c["name"]: c["points"] for c in r.json()["data"]}


@pytest.fixture(scope="module")
def spec(platform: Platform) -> dict[str, Any]:
    r = httpx.get(f"{platform.url}/openapi.json", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    return dict(r.json())


def validator(spec: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": spec["components"]})


def documented_requests(spec: dict[str, Any]) -> list[tuple[str, str, str, dict[str, str], Any]]:
    """(example name, method, path template, query, body) of every documented example;
    writes first and deletes last, so the delete example finds what the upsert one wrote."""
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            params = op.get("parameters", [])
            in_path = {p["name"]: p["example"] for p in params if p["in"] == "path"}
            query = {p["name"]: p["example"] for p in params if p["in"] == "query" and "example" in p}
            url = path.format(**{k: quote(v, safe="") for k, v in in_path.items()})
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            bodies = content.get("examples", {}) or {"": {"value": None}}
            for name, example in bodies.items():
                out.append((f"{method.upper()} {path} {name}".strip(), method, url, query, example["value"]))

    def rank(request: tuple[str, str, str, dict[str, str], Any]) -> int:
        _, method, url, _, _ = request
        return 2 if method == "delete" else 0 if url.endswith("/documents") else 1

    return sorted(out, key=rank)  # stable: spec order within a rank


def event_schema(content: dict[str, Any]) -> dict[str, Any]:
    """The chunk schema of a ``text/event-stream`` response (``data``'s JSON branch)."""
    data = content["text/event-stream"]["schema"]["properties"]["data"]["anyOf"]
    return dict(data[1]["contentSchema"]["anyOf"][0])


def test_documented_examples_are_accepted(platform: Platform, spec: dict[str, Any]) -> None:
    before = points(platform)
    requests = documented_requests(spec)
    assert len(requests) == 6 + 12  # 6 operations without a body, 12 body examples
    assert requests[0][0].startswith("POST /v1/collections/{name}/documents")
    assert requests[-1][0].startswith("DELETE")
    results: dict[str, Any] = {}
    for name, method, url, query, body in requests:
        path_template = name.split()[1]
        op = spec["paths"][path_template][method]
        r = api(platform, method, url, params=query, json=body)
        assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:300]}"
        assert r.headers.get("x-request-id") and "server-timing" in r.headers, name
        content = op["responses"]["200"]["content"]
        if r.headers["content-type"].startswith("text/event-stream"):
            chunk = validator(spec, event_schema(content))
            lines = [line for line in r.text.split("\n") if line]
            data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
            assert data[-1] == "[DONE]" and lines[-2].startswith(": server-timing "), name
            events = [json.loads(d) for d in data[:-1]]
            for event in events:
                assert not list(chunk.iter_errors(event)), (name, event)
            results[name] = events
        else:
            assert r.headers["content-type"] == "application/json", name
            v = validator(spec, content["application/json"]["schema"])
            errors = [e.message for e in v.iter_errors(r.json())]
            assert errors == [], f"{name}: {errors}"
            results[name] = r.json()
    # the examples tell one story: write a document, retrieve and cite it, delete it
    written = results["POST /v1/collections/{name}/documents document"]
    assert written["documents"] == 1 and written["chunks_written"] + written["unchanged"] >= 1
    hits = results["POST /v1/retrieve dense"]["data"]
    assert hits and hits[0]["doc_id"] == "api-keys"
    rag = results["POST /v1/chat/completions rag"]
    assert (
        rag["citations"][0]["doc_id"] == "api-keys"
        and "llmops keys create" in rag["choices"][0]["message"]["content"]
    )
    stream = results["POST /v1/chat/completions stream"]
    assert stream[-1]["choices"] == [] and stream[-1]["usage"]["completion_tokens"] > 0
    vectors = results["POST /v1/embeddings base64"]["data"]
    assert [v["index"] for v in vectors] == [0, 1] and all(isinstance(v["embedding"], str) for v in vectors)
    assert results["GET /v1/models/{model}"]["id"] == "extractive"
    assert results["DELETE /v1/collections/{name}/documents/{doc_id}"]["chunks_deleted"] >= 1
    assert points(platform) == before


def _written_documents(har: Path) -> set[tuple[str, str]]:
    """(collection path segment, document id) of every document a 200 upsert wrote."""
    written = set()
    for entry in json.loads(har.read_text())["log"]["entries"]:
        request, status = entry["request"], entry["response"]["status"]
        path = urlsplit(request["url"]).path
        if request["method"] == "POST" and path.endswith("/documents") and status == 200:
            collection = path.removeprefix("/v1/collections/").removesuffix("/documents")
            for doc in json.loads(request["postData"]["text"])["documents"]:
                written.add((collection, doc["id"]))
    return written


def _delete(platform: Platform, written: set[tuple[str, str]]) -> list[str]:
    problems = []
    for collection, doc_id in sorted(written):
        try:
            url = f"/v1/collections/{collection}/documents/{quote(doc_id, safe='')}"
        except UnicodeEncodeError:  # a lone surrogate: no URL can name it
            problems.append(f"{collection}/{doc_id!r}: cannot be deleted over HTTP")
            continue
        r = api(platform, "DELETE", url)
        if r.status_code not in (200, 404):  # 404: the run deleted it itself
            problems.append(f"{collection}/{doc_id!r}: {r.status_code} {r.text[:200]}")
    return problems


def test_schemathesis_finds_no_failures(platform: Platform, tmp_path: Path) -> None:
    before = points(platform)
    reports = tmp_path / "reports"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{platform.url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--generation-database", "none",
        "--request-timeout", "120",
        "--header", f"Authorization: {AUTH['Authorization']}",
        "--report", "json,har",
        "--report-json-path", str(reports / "run.json"),
        "--report-har-path", str(reports / "run.har"),
        "--no-color",
    ]  # fmt: skip
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    finally:
        har = reports / "run.har"
        problems = _delete(platform, _written_documents(har)) if har.exists() else []
    output = "\n".join(line[:300] for line in run.stdout.splitlines()[-80:]) + run.stderr[-2000:]
    report = json.loads((reports / "run.json").read_text())
    assert report["failures"] == [] and report["errors"] == [], output
    assert run.returncode == 0 and report["exit_code"] == 0, output
    assert report["operations"]["tested"] == report["operations"]["selected"] == OPERATIONS
    assert {p: v["status"] for p, v in report["phases"].items()} == {
        "examples": "success",
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "skip",
    }, report["phases"]
    cases = report["test_cases"]
    assert cases["with_failures"] == 0 and cases["errored"] == 0
    assert cases["generated"] >= OPERATIONS * 10, cases  # not a run that sent next to nothing
    print(f"schemathesis: {OPERATIONS} operations, {cases['generated']} test cases, no failures")
    assert problems == []
    assert points(platform) == before  # what the run wrote is gone again


@pytest.mark.parametrize("query", [{"since": "1e20"}, {"since": "0", "until": "9999-12-31T23:59:59-01:00"}])
def test_usage_rejects_times_out_of_range(platform: Platform, query: dict[str, str]) -> None:
    r = api(platform, "GET", "/v1/usage", params=query)
    assert r.status_code == 400 and r.json()["error"]["param"] in ("since", "until"), r.text


LONE_SURROGATE = "hi \ud800"  # JSON allows the escape "\ud800"; it is no Unicode text
SURROGATE_BODIES = {
    "chat": ("/v1/chat/completions", {"model": "extractive", "messages": [{"role": "user", "content": LONE_SURROGATE}]}),
    "completion": ("/v1/completions", {"model": "extractive", "prompt": LONE_SURROGATE}),
    "embedding": ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": LONE_SURROGATE}),
    "document": ("/v1/collections/dense-only/documents", {"documents": [{"id": "sur-text", "text": LONE_SURROGATE}]}),
    # once stored with a 200, after which every search that found it was a 500
    "metadata": (
        "/v1/collections/dense-only/documents",
        {"documents": [{"id": "sur-meta", "text": "penguins", "metadata": {"k": LONE_SURROGATE}}]},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SURROGATE_BODIES))
def test_lone_surrogates_are_a_400(platform: Platform, case: str) -> None:
    path, body = SURROGATE_BODIES[case]
    try:
        r = api(platform, "POST", path, content=json.dumps(body))  # json.dumps escapes it: "\ud800"
        assert r.status_code == 400, r.text
    finally:
        for doc in body.get("documents", []):
            api(platform, "DELETE", f"/v1/collections/dense-only/documents/{doc['id']}")
