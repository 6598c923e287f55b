"""Qdrant Edge backend: the Qdrant engine in-process, persisted on disk (the embedded default).

Until :meth:`EdgeStore.optimize` is called the shard holds plain segments only, so every search
is an exact scan. ``optimize()`` builds the HNSW index; it blocks and holds the GIL for a long
time (about 95 s at 100k x 512), so it is never called implicitly: run it offline or from a
maintenance command, never beside a Faust event loop. After it, searches use HNSW unless the
store was opened with ``exact=True``.

Not thread-safe: call a store from one thread. One process owns a shard (WAL lock); a second
opener fails.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    HasIdCondition,
    HnswIndexConfig,
    MatchValue,
    PayloadSchemaType,
    PayloadSelector,
    Point,
    Query,
    QueryRequest,
    ScrollRequest,
    SearchParams,
    UpdateOperation,
)

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


def _match_value(value: str | int | bool) -> Any:
    # qdrant-edge-py 0.9 turns a Python bool into the integer 1/0 (bool is an int), which then
    # matches no boolean payload; numpy's bool_ is not an int, so it reaches the bool variant.
    return np.bool_(value) if isinstance(value, bool) else value


def _has_shard(path: Path) -> bool:
    return (path / "edge_config.json").exists() or (path / "segments").exists()


class EdgeStore(StoreBase):
    """A :class:`~streams.store.base.VectorStore` on a Qdrant Edge shard at ``path``.

    Creates the shard (named vectors, cosine) if ``path`` holds none, loads it otherwise; a
    shard whose vector names or sizes differ from ``vector_dims`` raises ``ValueError``.
    ``payload_indexes`` get keyword indexes (used by filtered search and filter-aware HNSW).
    ``exact=True`` keeps searches exact after :meth:`optimize`; ``hnsw_ef`` is the HNSW beam
    (raised to ``limit`` when smaller). Not thread-safe.
    """

    def __init__(
        self,
        path: Path | str,
        vector_dims: Mapping[str, int],
        *,
        payload_indexes: Sequence[str] = DEFAULT_PAYLOAD_INDEXES,
        exact: bool = False,
        hnsw_ef: int = 128,
        hnsw_config: HnswIndexConfig | None = None,
        optimizers: EdgeOptimizersConfig | None = None,
        batch_size: int = 512,
    ) -> None:
        super().__init__(vector_dims)
        self.path = Path(path)
        self.exact = exact
        self.hnsw_ef = hnsw_ef
        self.batch_size = max(1, batch_size)
        config = EdgeConfig(
            vectors={
                name: EdgeVectorParams(dim, Distance.Cosine)
                for name, dim in self.vector_dims.items()
            },
            hnsw_config=hnsw_config,
            optimizers=optimizers,
        )
        if _has_shard(self.path):
            try:
                shard = EdgeShard.load(str(self.path), config)
            except Exception as exc:
                if "incompatible" in str(exc).lower():
                    raise ValueError(
                        f"shard at {self.path} does not match vector_dims {self.vector_dims}: {exc}"
                    ) from exc
                raise
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            shard = EdgeShard.create(str(self.path), config)
        self._shard: EdgeShard | None = shard
        existing = set(shard.info().payload_schema)
        for key in payload_indexes:
            if key not in existing:
                shard.update(UpdateOperation.create_field_index(key, PayloadSchemaType.Keyword))

    @property
    def shard(self) -> EdgeShard:
        """The open shard (raises after :meth:`close`)."""
        if self._shard is None:
            raise RuntimeError(f"EdgeStore at {self.path} is closed")
        return self._shard

    # -- writes -----------------------------------------------------------------------

    def upsert(self, items: Sequence[StoredItem]) -> None:
        points = []
        for item in items:
            pid, vectors, payload = self._prepare(item)
            # lists convert ~2x faster than numpy arrays in the binding
            points.append(Point(pid, {n: v.tolist() for n, v in vectors.items()}, payload))
        for start in range(0, len(points), self.batch_size):
            batch = points[start : start + self.batch_size]
            self.shard.update(UpdateOperation.upsert_points(batch))

    def delete(self, item_ids: Sequence[str]) -> None:
        ids = list(point_ids(item_ids))
        if ids:
            self.shard.update(UpdateOperation.delete_points(ids))

    # -- reads ------------------------------------------------------------------------

    def get(self, item_ids: Sequence[str], *, using: str = "image") -> dict[str, np.ndarray]:
        self._check_name(using)
        by_pid = point_ids(item_ids)
        if not by_pid:
            return {}
        records = self.shard.retrieve(list(by_pid), with_payload=False, with_vector=[using])
        out: dict[str, np.ndarray] = {}
        for rec in records:
            vec = (rec.vector or {}).get(using)
            if vec is not None:
                out[by_pid[str(rec.id)]] = as_float32(vec)
        return out

    def get_payloads(self, item_ids: Sequence[str]) -> dict[str, dict]:
        by_pid = point_ids(item_ids)
        if not by_pid:
            return {}
        records = self.shard.retrieve(list(by_pid), with_payload=True, with_vector=False)
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
        must = [FieldCondition(key=k, match=MatchValue(_match_value(v))) for k, v in conditions]
        must_not = [HasIdCondition(set(point_ids(exclude)))] if exclude else []
        flt = Filter(must=must or None, must_not=must_not or None) if must or must_not else None
        request = QueryRequest(
            limit=limit,
            query=Query.Nearest(query.tolist(), using=using),
            filter=flt,
            with_payload=True,
            with_vector=[using] if with_vectors else False,
            params=SearchParams(hnsw_ef=max(self.hnsw_ef, limit), exact=self.exact),
        )
        hits = []
        for p in self.shard.query(request):
            payload = dict(p.payload or {})
            vec = (p.vector or {}).get(using) if with_vectors else None
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
        return bool(self.shard.retrieve([point_id(item_id)], with_payload=False, with_vector=False))

    def count(self) -> int:
        return int(self.shard.count(CountRequest(exact=True)))

    def item_ids(self) -> list[str]:
        out: list[str] = []
        offset = None
        while True:
            records, offset = self.shard.scroll(
                ScrollRequest(
                    offset=offset,
                    limit=_SCROLL_PAGE,
                    with_payload=PayloadSelector.Include([ITEM_ID_KEY]),
                    with_vector=False,
                )
            )
            out.extend(rec.payload[ITEM_ID_KEY] for rec in records if rec.payload)
            if offset is None:
                return out

    # -- maintenance ------------------------------------------------------------------

    def optimize(self) -> bool:
        """Build the HNSW index / merge segments; blocks and holds the GIL for a long time.

        Never call it from an event loop or beside heartbeats. Returns whether anything changed.
        """
        return bool(self.shard.optimize())

    def flush(self) -> None:
        """Flush pending changes to disk."""
        self.shard.flush()

    def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            try:
                shard.flush()
            finally:
                shard.close()
