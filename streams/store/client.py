"""qdrant-client backend: the production code path for a Qdrant server.

The same class runs on qdrant-client's local mode (``:memory:`` or a directory), which is a
pure-Python brute-force scan: good for tests and small stores (<= 10-20k points), nothing else.
Local mode ignores payload indexes and search params, so they are only sent to a server.

Not thread-safe (qdrant-client's local mode is not either): call a store from one thread.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from streams.store.base import (
    DEFAULT_PAYLOAD_INDEXES,
    ITEM_ID_KEY,
    Hit,
    StoreBase,
    StoredItem,
    as_float32,
    filter_items,
    point_id,
    point_ids,
)

_SCROLL_PAGE = 1024


def _is_local(client: QdrantClient) -> bool:
    try:
        from qdrant_client.local.qdrant_local import QdrantLocal
    except ImportError:  # pragma: no cover - layout of a future qdrant-client
        return False
    return isinstance(getattr(client, "_client", None), QdrantLocal)


class QdrantClientStore(StoreBase):
    """A :class:`~streams.store.base.VectorStore` on one collection of a ``QdrantClient``.

    Creates the collection (named vectors, cosine) if absent; an existing collection lacking a
    vector of ``vector_dims`` or with another size/distance raises ``ValueError``.
    ``payload_indexes`` get keyword indexes on a server. ``exact=True`` makes server searches
    exact; ``hnsw_ef`` is the HNSW beam (raised to ``limit`` when smaller). With
    ``owns_client`` (the default) :meth:`close` closes the client too. Not thread-safe.
    """

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        vector_dims: Mapping[str, int],
        *,
        payload_indexes: Sequence[str] = DEFAULT_PAYLOAD_INDEXES,
        exact: bool = False,
        hnsw_ef: int = 128,
        batch_size: int = 256,
        owns_client: bool = True,
    ) -> None:
        super().__init__(vector_dims)
        self._client: QdrantClient | None = client
        self.collection = collection
        self.exact = exact
        self.hnsw_ef = hnsw_ef
        self.batch_size = max(1, batch_size)
        self.owns_client = owns_client
        self.is_local = _is_local(client)
        if client.collection_exists(collection):
            self._check_collection()
        else:
            client.create_collection(
                collection,
                vectors_config={
                    name: qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
                    for name, dim in self.vector_dims.items()
                },
            )
        if not self.is_local:
            existing = set(client.get_collection(collection).payload_schema or {})
            for key in payload_indexes:
                if key not in existing:
                    client.create_payload_index(
                        collection, key, qm.PayloadSchemaType.KEYWORD, wait=True
                    )

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        collection: str,
        vector_dims: Mapping[str, int],
        *,
        api_key: str | None = None,
        timeout: int | None = None,
        **kwargs: Any,
    ) -> QdrantClientStore:
        """A store on a Qdrant server at ``url``."""
        client = QdrantClient(url=url, api_key=api_key, timeout=timeout)
        return cls(client, collection, vector_dims, **kwargs)

    @classmethod
    def local(
        cls, path: Path | str, collection: str, vector_dims: Mapping[str, int], **kwargs: Any
    ) -> QdrantClientStore:
        """A store in qdrant-client's local mode, persisted under ``path`` (one client a path)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        # The store may be opened on one thread and used from the worker's thread.
        client = QdrantClient(path=str(path), force_disable_check_same_thread=True)
        return cls(client, collection, vector_dims, **kwargs)

    @classmethod
    def memory(
        cls, collection: str, vector_dims: Mapping[str, int], **kwargs: Any
    ) -> QdrantClientStore:
        """A throwaway in-memory store (qdrant-client local mode)."""
        return cls(QdrantClient(location=":memory:"), collection, vector_dims, **kwargs)

    @property
    def client(self) -> QdrantClient:
        """The open client (raises after :meth:`close`)."""
        if self._client is None:
            raise RuntimeError(f"QdrantClientStore {self.collection!r} is closed")
        return self._client

    def _check_collection(self) -> None:
        params = self.client.get_collection(self.collection).config.params.vectors
        existing = params if isinstance(params, Mapping) else {}
        for name, dim in self.vector_dims.items():
            vp = existing.get(name)
            if vp is None or vp.size != dim or vp.distance != qm.Distance.COSINE:
                found = {n: (p.size, str(p.distance)) for n, p in existing.items()}
                raise ValueError(
                    f"collection {self.collection!r} does not match vector_dims "
                    f"{self.vector_dims} (cosine): it has {found or params}"
                )

    # -- writes -----------------------------------------------------------------------

    def upsert(self, items: Sequence[StoredItem]) -> None:
        points = []
        for item in items:
            pid, vectors, payload = self._prepare(item)
            points.append(
                qm.PointStruct(
                    id=pid, vector={n: v.tolist() for n, v in vectors.items()}, payload=payload
                )
            )
        for start in range(0, len(points), self.batch_size):
            batch = points[start : start + self.batch_size]
            self.client.upsert(self.collection, batch, wait=True)

    def delete(self, item_ids: Sequence[str]) -> None:
        ids = list(point_ids(item_ids))
        if ids:
            self.client.delete(
                self.collection, points_selector=qm.PointIdsList(points=ids), wait=True
            )

    # -- reads ------------------------------------------------------------------------

    def get(self, item_ids: Sequence[str], *, using: str = "image") -> dict[str, np.ndarray]:
        self._check_name(using)
        by_pid = point_ids(item_ids)
        if not by_pid:
            return {}
        records = self.client.retrieve(
            self.collection, list(by_pid), with_payload=False, with_vectors=[using]
        )
        out: dict[str, np.ndarray] = {}
        for rec in records:
            vec = rec.vector.get(using) if isinstance(rec.vector, Mapping) else None
            if vec is not None:
                out[by_pid[str(rec.id)]] = as_float32(vec)
        return out

    def get_payloads(self, item_ids: Sequence[str]) -> dict[str, dict]:
        by_pid = point_ids(item_ids)
        if not by_pid:
            return {}
        records = self.client.retrieve(
            self.collection, list(by_pid), with_payload=True, with_vectors=False
        )
        return {by_pid[str(rec.id)]: dict(rec.payload or {}) for rec in records}

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        *,
        using: str = "image",
        exclude: Collection[str] = (),
        with_vectors: bool = False,
        filter_payload: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        query = self._check_vector(vector, using)
        conditions = filter_items(filter_payload)
        if limit <= 0:
            return []
        must: list[qm.Condition] = [
            qm.FieldCondition(key=k, match=qm.MatchValue(value=v)) for k, v in conditions
        ]
        must_not: list[qm.Condition] = (
            [qm.HasIdCondition(has_id=list(point_ids(exclude)))] if exclude else []
        )
        flt = qm.Filter(must=must or None, must_not=must_not or None) if must or must_not else None
        params = (
            None
            if self.is_local
            else qm.SearchParams(hnsw_ef=max(self.hnsw_ef, limit), exact=self.exact)
        )
        response = self.client.query_points(
            self.collection,
            query=query.tolist(),
            using=using,
            query_filter=flt,
            search_params=params,
            limit=limit,
            with_payload=True,
            with_vectors=[using] if with_vectors else False,
        )
        hits = []
        for p in response.points:
            payload = dict(p.payload or {})
            vec = p.vector.get(using) if with_vectors and isinstance(p.vector, Mapping) else None
            hits.append(
                Hit(
                    item_id=payload[ITEM_ID_KEY],
                    score=float(p.score),
                    vector=as_float32(vec) if vec is not None else None,
                    payload=payload,
                )
            )
        return hits

    def contains(self, item_id: str) -> bool:
        records = self.client.retrieve(
            self.collection, [point_id(item_id)], with_payload=False, with_vectors=False
        )
        return bool(records)

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def item_ids(self) -> list[str]:
        out: list[str] = []
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                limit=_SCROLL_PAGE,
                offset=offset,
                with_payload=[ITEM_ID_KEY],
                with_vectors=False,
            )
            out.extend(rec.payload[ITEM_ID_KEY] for rec in records if rec.payload)
            if offset is None:
                return out

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            if self.owns_client:
                client.close()
