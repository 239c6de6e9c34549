"""A vector store that cannot be reached is a 503, not a crash; the deployment lives on."""

from __future__ import annotations

import pytest

from services.errors import ServiceUnavailableError
from services.retrieval.deployment import RetrievalServer

pytestmark = pytest.mark.unit


async def test_unreachable_server_store_is_service_unavailable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = RetrievalServer(
        {"vector_store": {"url": "http://127.0.0.1:9", "timeout_s": 2}, "collections": [{"name": "docs"}]},
        [{"name": "all-minilm-l6-v2"}],
        str(tmp_path),
        embed_handles={},
    )
    for _ in range(2):  # and again: nothing cached a half-made state
        with pytest.raises(ServiceUnavailableError, match="vector store unreachable"):
            await server.search("docs", "acme", "a question")
    with pytest.raises(ServiceUnavailableError):
        await server.collections("acme")
