"""Vector store: one small interface (:class:`VectorStore`), two backends with the same behaviour.

- ``edge``: :class:`EdgeStore`, Qdrant Edge in-process on disk (the embedded default);
- ``qdrant``: :class:`QdrantClientStore` on a Qdrant server (the production code path);
- ``qdrant-local`` / ``qdrant-memory``: the same class on qdrant-client's local mode (tests).

Stores are not thread-safe: the worker calls its store from one dedicated thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from streams.store.base import (
    DEFAULT_PAYLOAD_INDEXES,
    IMAGE,
    ITEM_ID_KEY,
    TEXT,
    Hit,
    StoredItem,
    VectorStore,
    point_id,
)
from streams.store.client import QdrantClientStore
from streams.store.edge import EdgeStore

if TYPE_CHECKING:
    from streams.settings import VectorStoreSettings

STORE_KINDS: tuple[str, ...] = ("edge", "qdrant", "qdrant-local", "qdrant-memory")

__all__ = [
    "DEFAULT_PAYLOAD_INDEXES",
    "IMAGE",
    "ITEM_ID_KEY",
    "STORE_KINDS",
    "TEXT",
    "EdgeStore",
    "Hit",
    "QdrantClientStore",
    "StoredItem",
    "VectorStore",
    "open_configured",
    "open_store",
    "point_id",
]


def open_store(
    kind: str,
    *,
    path: Path,
    url: str,
    collection: str,
    vector_dims: Mapping[str, int],
    api_key: SecretStr | str | None = None,
    **options: Any,
) -> VectorStore:
    """Open (creating if needed) the store of ``kind``.

    ``path`` is the store directory for ``edge`` and ``qdrant-local``; ``url`` and ``api_key``
    (``VREC_QDRANT_API_KEY``, sent as the ``api-key`` header) are used by ``qdrant``;
    ``collection`` by the qdrant-client kinds. ``options`` go to the backend (e.g.
    ``payload_indexes``, ``exact``, ``hnsw_ef``).
    """
    if kind == "edge":
        return EdgeStore(path, vector_dims, **options)
    if kind == "qdrant":
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        return QdrantClientStore.from_url(
            url, collection, vector_dims, api_key=key or None, **options
        )
    if kind == "qdrant-local":
        return QdrantClientStore.local(path, collection, vector_dims, **options)
    if kind == "qdrant-memory":
        return QdrantClientStore.memory(collection, vector_dims, **options)
    raise ValueError(f"unknown store kind {kind!r}; expected one of {STORE_KINDS}")


def open_configured(
    section: VectorStoreSettings, *, path: Path, vector_dims: Mapping[str, int], **options: Any
) -> VectorStore:
    """Open the store ``Settings.vector_store`` describes (``path``: its folder on disk)."""
    return open_store(
        section.kind,
        path=path,
        url=section.qdrant_url,
        api_key=section.qdrant_api_key,
        collection=section.collection,
        vector_dims=vector_dims,
        **options,
    )
