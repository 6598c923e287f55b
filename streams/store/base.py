"""The vector store interface shared by every backend.

Items are addressed by their string ``item_id`` (kept verbatim, leading zeros included);
Qdrant point ids are the deterministic :func:`point_id` of it, and the backend also writes
``item_id`` into the payload. Scores are cosine similarities, best first.

Backends are not thread-safe: the worker calls its store from one dedicated thread.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np

ITEM_ID_KEY = "item_id"
"""Payload key under which every backend stores the item id."""

IMAGE = "image"
TEXT = "text"
"""Vector names: the image embedding, and the optional text embedding (image + text fusion)."""

DEFAULT_PAYLOAD_INDEXES: tuple[str, ...] = ("category", "product_code")
"""Payload keys that get a keyword index where the backend supports payload indexes."""

# Namespace of the uuid5 point ids. Never change it: stored points are addressed by it.
_POINT_NAMESPACE = uuid.UUID("6f1c0d1e-5b7a-5d4e-9a43-7c1e0b5f2a90")

FilterValue = str | int | bool


def point_id(item_id: str) -> str:
    """Deterministic Qdrant point id (uuid5 string) of an item id."""
    if not isinstance(item_id, str):
        raise TypeError(f"item_id must be str, got {type(item_id).__name__}")
    return str(uuid.uuid5(_POINT_NAMESPACE, item_id))


@dataclass(frozen=True)
class StoredItem:
    """One item to store: named vectors (L2-normalised) plus a JSON-able payload."""

    item_id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    """One search result; ``vector`` is the searched vector (float32) when asked for."""

    item_id: str
    score: float
    vector: np.ndarray | None
    payload: dict[str, Any]


@runtime_checkable
class VectorStore(Protocol):
    """What the worker needs from a vector store. Implementations are not thread-safe."""

    vector_dims: dict[str, int]

    def upsert(self, items: Sequence[StoredItem]) -> None:
        """Insert or fully replace (vectors and payload) the given items."""
        ...

    def get(self, item_ids: Sequence[str], *, using: str = "image") -> dict[str, np.ndarray]:
        """Vectors named ``using`` of the given items; missing ids are simply absent."""
        ...

    def get_payloads(self, item_ids: Sequence[str]) -> dict[str, dict]:
        """Payloads of the given items; missing ids are simply absent."""
        ...

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
        """Nearest items by cosine, best first, leaving out ``exclude`` (item ids).

        ``filter_payload`` is an exact match on payload keys (values: str, int or bool).
        """
        ...

    def search_fused(
        self,
        image: np.ndarray,
        text: np.ndarray | None,
        limit: int,
        *,
        text_weight: float,
        exclude: Collection[str] = (),
        filter_payload: Mapping[str, Any] | None = None,
        candidates: int = 0,
    ) -> list[Hit]:
        """Nearest items by ``(1 - w) * cos_image + w * cos_text`` (see :class:`StoreBase`)."""
        ...

    def contains(self, item_id: str) -> bool:
        """Whether the item is stored."""
        ...

    def count(self) -> int:
        """Number of stored items."""
        ...

    def item_ids(self) -> list[str]:
        """All stored item ids (by scrolling), e.g. to rebuild caches."""
        ...

    def delete(self, item_ids: Sequence[str]) -> None:
        """Delete the given items; unknown ids are ignored."""
        ...

    def close(self) -> None:
        """Release the store (idempotent)."""
        ...


class StoreBase:
    """Validation and context-manager helpers shared by the backends."""

    vector_dims: dict[str, int]

    def __init__(self, vector_dims: Mapping[str, int]) -> None:
        if not vector_dims:
            raise ValueError("vector_dims must name at least one vector")
        for name, dim in vector_dims.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"vector names must be non-empty strings, got {name!r}")
            if int(dim) <= 0:
                raise ValueError(f"vector {name!r}: dimension must be positive, got {dim}")
        self.vector_dims = {name: int(dim) for name, dim in vector_dims.items()}

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # the backends implement these (see VectorStore)
    search: Any
    get: Any

    def search_fused(
        self,
        image: np.ndarray,
        text: np.ndarray | None,
        limit: int,
        *,
        text_weight: float,
        exclude: Collection[str] = (),
        filter_payload: Mapping[str, Any] | None = None,
        candidates: int = 0,
    ) -> list[Hit]:
        """Nearest items by the fused score ``(1 - w) * cos_image + w * cos_text``, best first
        (ties by item id); ``w`` is ``text_weight``.

        Two searches fetch the top ``candidates`` (default ``max(4 * limit, 64)``) by the image
        and by the text vector (same ``exclude`` and ``filter_payload``); the missing cosine of
        each candidate is computed from its stored vector and the union is re-ranked exactly.
        So the result is exact when ``candidates`` >= the store size, and otherwise misses only
        items ranked below ``candidates`` in *both* modalities. Items without a text vector are
        scored by their image cosine alone. With ``text`` ``None``, ``w == 0`` or no ``"text"``
        vector in this store it is :meth:`search` by the image vector. Hit vectors are None.
        """
        from encoders.fusion import check_weight, combine_scores

        w = check_weight(text_weight)
        if text is None or w == 0.0 or TEXT not in self.vector_dims:
            return self.search(image, limit, exclude=exclude, filter_payload=filter_payload)
        q_img = self._check_vector(image, IMAGE)
        q_txt = self._check_vector(text, TEXT)
        if limit <= 0:
            return []
        n = max(candidates, limit) if candidates > 0 else max(4 * limit, 64)
        found: dict[str, Hit] = {}
        cos_i: dict[str, float] = {}
        cos_t: dict[str, float | None] = {}
        kw = {"exclude": exclude, "filter_payload": filter_payload}
        for h in self.search(q_img, n, using=IMAGE, **kw):
            found[h.item_id], cos_i[h.item_id] = h, h.score
        for h in self.search(q_txt, n, using=TEXT, **kw):
            found.setdefault(h.item_id, h)
            cos_t[h.item_id] = h.score
        need_i = [i for i in found if i not in cos_i]
        for item_id, vec in self.get(need_i, using=IMAGE).items():
            cos_i[item_id] = float(vec @ q_img)
        need_t = [i for i in found if i not in cos_t]
        got_t = self.get(need_t, using=TEXT)
        for item_id in need_t:
            vec = got_t.get(item_id)
            cos_t[item_id] = None if vec is None else float(vec @ q_txt)
        scores = combine_scores(cos_i, cos_t, w)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [Hit(i, s, None, found[i].payload) for i, s in ranked]

    def __enter__(self) -> StoreBase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- validation -------------------------------------------------------------------

    def _check_name(self, using: str) -> int:
        try:
            return self.vector_dims[using]
        except KeyError:
            raise ValueError(
                f"unknown vector name {using!r}; this store has {sorted(self.vector_dims)}"
            ) from None

    def _check_vector(self, vector: np.ndarray, using: str) -> np.ndarray:
        dim = self._check_name(using)
        arr = np.asarray(vector, dtype=np.float32)
        if arr.shape != (dim,):
            raise ValueError(f"vector {using!r} must have shape ({dim},), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"vector {using!r} has non-finite values")
        return arr

    def _prepare(self, item: StoredItem) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
        """(point id, checked float32 vectors, payload with item_id) of one item."""
        if not item.vectors:
            raise ValueError(f"item {item.item_id!r} has no vectors")
        vectors = {name: self._check_vector(v, name) for name, v in item.vectors.items()}
        payload = {**item.payload, ITEM_ID_KEY: item.item_id}
        return point_id(item.item_id), vectors, payload


def filter_items(filter_payload: Mapping[str, Any] | None) -> list[tuple[str, FilterValue]]:
    """Validated (key, value) pairs of an exact-match payload filter."""
    if not filter_payload:
        return []
    out: list[tuple[str, FilterValue]] = []
    for key, value in filter_payload.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"filter keys must be non-empty strings, got {key!r}")
        if not isinstance(value, str | int | bool):
            raise TypeError(
                f"filter on {key!r}: exact match needs a str, int or bool value, "
                f"got {type(value).__name__}"
            )
        out.append((key, value))
    return out


def as_float32(values: Any) -> np.ndarray:
    """A float32 copy of a vector returned by a backend."""
    return np.asarray(values, dtype=np.float32)


def point_ids(item_ids: Collection[str]) -> dict[str, str]:
    """Map point id -> item id for the given (deduplicated) item ids."""
    return {point_id(i): i for i in item_ids}
