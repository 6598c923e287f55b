"""The worker's in-memory mirror of the item index: one float32 matrix and the payload facts
the rankers need (product code, price).

Filled from the vector store at start, then by the encode agent and the item replica. Rows are
appended (the matrix grows by doubling) and overwritten in place when an item is re-uploaded, so
an item's row index never changes while the worker runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np


class Catalogue:
    def __init__(self, dim: int | None = None) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._mat = np.zeros((0, dim or 0), dtype=np.float32)
        self._norms = np.zeros(0, dtype=np.float64)
        self.code_of: dict[str, str] = {}  # item -> product code
        self.members: dict[str, set[str]] = {}  # product code -> items
        self.price_of: dict[str, float] = {}  # item -> catalogue price (if any)
        self._min = np.inf  # the smallest coordinate ever put (kept when a row is overwritten)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    @property
    def dim(self) -> int:
        return int(self._mat.shape[1])

    @property
    def nonnegative(self) -> bool:
        """No vector put has a negative coordinate (e.g. ReLU image features): the cosine of
        two of them, or of non-negative mixes of them, is at least 0."""
        return self._min >= 0

    def index_of(self, item_id: str) -> int | None:
        return self._index.get(item_id)

    def indices(self, item_ids: Iterable[str]) -> tuple[list[str], np.ndarray]:
        """The ids that have a vector (input order kept) and their row indices."""
        index = self._index
        kept = [i for i in item_ids if i in index]
        return kept, np.fromiter((index[i] for i in kept), dtype=np.intp, count=len(kept))

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row index of each id (-1 for ids without a vector)."""
        get = self._index.get
        return np.fromiter(map(get, item_ids, repeat(-1)), dtype=np.intp, count=len(item_ids))

    def vector(self, item_id: str) -> np.ndarray | None:
        """The item's float32 vector (a read-only view), or None."""
        row = self._index.get(item_id)
        if row is None:
            return None
        view = self._mat[row]
        view.flags.writeable = False
        return view

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self._mat[idx]

    def norms(self, idx: np.ndarray) -> np.ndarray:
        """Euclidean norms of the rows (1 for a zero vector: cosines with it are 0)."""
        return self._norms[idx]

    def same_vector(self, item_id: str, vector: np.ndarray) -> bool:
        have = self.vector(item_id)
        return have is not None and np.array_equal(have, np.asarray(vector, dtype=np.float32))

    def put(self, item_id: str, vector: np.ndarray | None, payload: Mapping[str, Any]) -> None:
        """Add or update an item (event loop or store thread before the worker runs)."""
        if vector is not None:
            self._put_vector(item_id, np.asarray(vector, dtype=np.float32).ravel())
        code = payload.get("product_code")
        if code:
            old = self.code_of.get(item_id)
            if old is not None and old != str(code):
                self.members.get(old, set()).discard(item_id)
            self.code_of[item_id] = str(code)
            self.members.setdefault(str(code), set()).add(item_id)
        price = payload.get("price")
        if price is not None:
            self.price_of[item_id] = float(price)

    def _put_vector(self, item_id: str, vec: np.ndarray) -> None:
        if self._mat.shape[1] == 0 and not self._ids:
            self._mat = np.zeros((0, vec.shape[0]), dtype=np.float32)
        if vec.shape[0] != self._mat.shape[1]:
            raise ValueError(
                f"item {item_id!r}: vector of {vec.shape[0]} dims, catalogue has {self.dim}"
            )
        row = self._index.get(item_id)
        if row is None:
            row = len(self._ids)
            if row >= self._mat.shape[0]:
                grow = max(1024, self._mat.shape[0])
                self._mat = np.concatenate(
                    [self._mat, np.zeros((grow, self._mat.shape[1]), dtype=np.float32)]
                )
                self._norms = np.concatenate([self._norms, np.zeros(grow)])
            self._ids.append(item_id)
            self._index[item_id] = row
        self._mat[row] = vec
        if len(vec):
            self._min = min(self._min, float(vec.min()))
        norm = float(np.linalg.norm(vec.astype(np.float64)))
        self._norms[row] = norm if norm > 0 else 1.0
