"""The vector store: one interface, two backends.

* ``edge`` (default, ``vector_store.path`` or ``<data_dir>/qdrant``): Qdrant's own
  engine in-process (:mod:`services.retrieval.store.edge`).
* ``server`` (``vector_store.url``): a Qdrant server through qdrant-client
  (:mod:`services.retrieval.store.server`).

qdrant-client's local mode is only the brute-force reference of the congruence
tests (``ServerStore(config, client=QdrantClient(location=":memory:"))``).

Every search is filtered by tenant inside the engine (``must: tenant == tenant``);
a request's own filter is ANDed to it and can never widen it.
"""

from __future__ import annotations

from services.retrieval.config import VectorStoreConfig
from services.retrieval.filters import build_filter
from services.retrieval.store.base import (
    BaseStore,
    CollectionMismatchError,
    IndexStatus,
    MigrationRequiredError,
    StoreLockedError,
)

VectorStore = BaseStore  # the interface every caller types against

__all__ = [
    "CollectionMismatchError",
    "IndexStatus",
    "MigrationRequiredError",
    "StoreLockedError",
    "VectorStore",
    "build_filter",
    "open_store",
]


def open_store(config: VectorStoreConfig, data_dir: str, *, allow_legacy: bool = False) -> BaseStore:
    """The configured backend: a Qdrant server when ``config.url`` is set, else the embedded Edge engine.

    Raises:
        StoreLockedError: another process holds the embedded store.
        MigrationRequiredError: the embedded folder holds old-format collections
            (``allow_legacy=True`` opens it anyway, for the migration itself).
    """
    if config.url:
        from services.retrieval.store.server import ServerStore

        return ServerStore(config)
    from services.retrieval.store.edge import EdgeStore

    return EdgeStore(config, data_dir, allow_legacy=allow_legacy)
