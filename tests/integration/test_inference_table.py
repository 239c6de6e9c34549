"""The gateway's inference table on the real platform: sampled, redacted Parquet by hour."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pyarrow.dataset as ds
import pytest

from tests.integration.conftest import FIXED_2, KEYS, Platform

pytestmark = pytest.mark.integration

DOC = {
    "id": "rollo-itable",
    "text": "Rollo was the first ruler of Normandy. He swore fealty to King Charles III in 911.",
    "source": "wiki/rollo",
}


def rows_for(platform: Platform, ids: set[str], timeout_s: float = 20) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        if platform.inference_table.is_dir():
            table = ds.dataset(
                str(platform.inference_table), format="parquet", partitioning="hive"
            ).to_table()
            found = {r["request_id"]: r for r in table.to_pylist() if r["request_id"] in ids}
            if set(found) == ids:
                return found
        time.sleep(0.25)
    return found


def test_chat_and_rag_requests_land_redacted_with_citations_and_version(platform: Platform) -> None:
    headers = {"Authorization": f"Bearer {KEYS['acme']}"}
    r = httpx.post(
        f"{platform.url}/v1/collections/docs/documents",
        json={"documents": [DOC]},
        headers=headers,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    client = platform.client()
    chat = client.chat.completions.with_raw_response.create(
        model="extractive",
        messages=[
            {"role": "system", "content": "Context: Rollo ruled Normandy. Write to rollo@example.com."},
            {"role": "user", "content": "Who ruled Normandy? My card is 4111 1111 1111 1111."},
        ],
    )
    rag_stream = client.chat.completions.with_raw_response.create(
        model="rag-docs",
        messages=[{"role": "user", "content": "Who was the first ruler of Normandy?"}],
        stream=True,
    )
    rag_text = "".join((c.choices[0].delta.content or "") for c in rag_stream.parse() if c.choices)
    skipped = client.chat.completions.with_raw_response.create(
        model=FIXED_2, messages=[{"role": "user", "content": "not sampled"}]
    )
    ids = {chat.headers["x-request-id"], rag_stream.headers["x-request-id"]}
    rows = rows_for(platform, ids)
    assert set(rows) == ids
    c = rows[chat.headers["x-request-id"]]
    assert c["tenant"] == "acme" and c["model"] == "extractive" and c["version"] == "v1"
    assert c["engine"] == "extractive" and c["status"] == 200 and c["stream"] is False
    assert "[EMAIL]" in c["prompt"] and "rollo@example.com" not in c["prompt"]
    assert "[CARD]" in c["prompt"] and "4111" not in c["prompt"]
    assert c["completion"] == chat.parse().choices[0].message.content.replace("rollo@example.com", "[EMAIL]")
    assert c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 and c["latency_ms"] > 0
    assert c["cost_usd"] > 0 and c["hour"] == time.strftime("%Y-%m-%dT%H", time.gmtime(c["ts"].timestamp()))
    g = rows[rag_stream.headers["x-request-id"]]
    assert g["model"] == "rag-docs" and g["stream"] is True and g["engine"] == "rag:extractive"
    assert g["completion"] == rag_text and g["ttft_ms"] is not None
    assert g["citations"] and g["chunk_ids"] == [x["chunk_id"] for x in g["citations"]]
    assert any("Rollo was the first ruler" in t for t in g["chunk_texts"])
    assert len(g["chunk_texts"]) == len(g["chunk_ids"])
    # rate 0 for the load-test model: never recorded
    assert rows_for(platform, {skipped.headers["x-request-id"]}, timeout_s=1.5) == {}


def test_model_card_names_version_digest_and_platform(platform: Platform) -> None:
    card = platform.client().models.retrieve("rag-docs")
    extra = card.model_extra or {}
    assert extra["version"] == "v1" and len(extra["config_digest"]) == 16
    assert extra["platform_version"] not in ("", None)
    other = platform.client().models.retrieve("extractive").model_extra or {}
    assert other["config_digest"] != extra["config_digest"]
