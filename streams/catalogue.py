"""The worker's in-memory mirror of the item index: one float32 matrix and the payload facts
the rankers need (product code, price).

Filled from the vector store at start, then by the encode agent and the item replica. Rows are
appended (the matrix grows by doubling) and overwritten in place when an item is re-uploaded, so
an item's row index never changes while the worker runs.

The mirror also keeps a :class:`CosineSketch` of its vectors (64 numbers per item instead of
1,280) from which a ranker bounds a cosine without reading the item's vector.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

SKETCH_DIMS = 64  # coordinates per item in the cosine sketch
SKETCH_SAMPLE = 1024  # rows the sketch's basis is fitted to
SKETCH_MIN_ROWS = 256  # no sketch for a smaller catalogue
# a sketch bound's slack for rounding: float32 dot products of 1,280 terms are off by at most
# ~8e-5 (n * 2**-24, relative to the product of the norms), the sketch's own sums by far less
SKETCH_MARGIN = 2e-4


class CosineSketch:
    """Bounds on cosines from a few coordinates per vector.

    Each item's unit vector ``v`` is kept as its coordinates ``B'v`` on a fixed orthonormal
    basis ``B`` of ``r`` columns (the leading directions of a sample of the catalogue) and the
    norm of its remainder ``v - BB'v``. For any user vector ``u``,
    ``u.v = (B'u).(B'v) + r_u.r_v`` and ``|r_u.r_v| <= |r_u| |r_v|`` (Cauchy-Schwarz), so
    :meth:`bounds` gives an interval that holds the cosine (widened by :data:`SKETCH_MARGIN` for
    rounding) from ``r`` numbers per item; on the H&M catalogue its half-width is ~0.1.
    """

    def __init__(self, basis: np.ndarray, capacity: int) -> None:
        self.basis = np.ascontiguousarray(basis, dtype=np.float64)  # (dim, r)
        self.fitted_rows = 0  # catalogue rows when the basis was fitted
        r = self.basis.shape[1]
        self.coords = np.zeros((capacity, r), dtype=np.float32)
        self.rest = np.zeros(capacity, dtype=np.float64)  # |remainder| per row

    @classmethod
    def fit(cls, sample: np.ndarray, dims: int, capacity: int) -> CosineSketch:
        """A basis of the ``dims`` leading right singular vectors of the unit rows of
        ``sample`` (randomised subspace iteration, a fixed seed: the same sample gives the same
        basis)."""
        unit = _unit(sample).astype(np.float64)
        dims = min(dims, unit.shape[1])
        probe = np.random.default_rng(0).standard_normal((unit.shape[1], dims + 16))
        q, _ = np.linalg.qr(unit.T @ (unit @ probe))
        for _ in range(2):
            q, _ = np.linalg.qr(unit.T @ (unit @ q))
        _, _, vt = np.linalg.svd(unit @ q, full_matrices=False)
        return cls(q @ vt[:dims].T, capacity)

    def grow(self, capacity: int) -> None:
        """Room for ``capacity`` rows (the catalogue's matrix grew)."""
        extra = capacity - len(self.rest)
        if extra > 0:
            zeros = np.zeros((extra, self.coords.shape[1]), dtype=np.float32)
            self.coords = np.concatenate([self.coords, zeros])
            self.rest = np.concatenate([self.rest, np.zeros(extra)])

    def set_rows(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Sketch ``vectors`` (float32, any norm; zero rows stay zero) as catalogue ``rows``."""
        coords, rest = self.project(vectors)
        self.coords[rows] = coords
        self.rest[rows] = rest

    def project(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(coordinates, remainder norms) of ``vectors`` scaled to unit length (in float64: the
        bounds' margin is for the cosines' float32 sums alone)."""
        unit = _unit(vectors).astype(np.float64)
        coords = unit @ self.basis
        return coords, np.linalg.norm(unit - coords @ self.basis.T, axis=1)

    def project_one(self, unit: np.ndarray) -> tuple[np.ndarray, float]:
        """:meth:`project` of one unit vector, by one matrix-vector product: on the ranking's
        path a matrix product would wake BLAS's threads, whose spinning then slows the whole
        worker (measured: 2x the CPU per event on 2 cores). The remainder's norm comes from
        Pythagoras, padded so that rounding never shrinks it."""
        unit = unit.astype(np.float64)
        coords = self.basis.T @ unit
        left = float(unit @ unit) - float(coords @ coords)
        return coords, math.sqrt(max(left, 0.0) + 1e-9)

    def bounds(
        self, rows: np.ndarray, user_coords: np.ndarray, user_rest: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the cosine of catalogue row ``rows[n]`` with the user sketched as
        ``user_coords[n]``, ``user_rest[n]`` (:meth:`project_one` of the user vectors)."""
        mid = np.einsum("ij,ij->i", self.coords[rows], user_coords)
        half = self.rest[rows] * user_rest + SKETCH_MARGIN
        return mid - half, mid + half


def _unit(vectors: np.ndarray) -> np.ndarray:
    """float32 rows divided by their norms (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    return (vectors / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)


class Catalogue:
    def __init__(self, dim: int | None = None, sketch_dims: int = SKETCH_DIMS) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._mat = np.zeros((0, dim or 0), dtype=np.float32)
        self._norms = np.zeros(0, dtype=np.float64)
        self.code_of: dict[str, str] = {}  # item -> product code
        self.members: dict[str, set[str]] = {}  # product code -> items
        self.price_of: dict[str, float] = {}  # item -> catalogue price (if any)
        self._min = np.inf  # the smallest coordinate ever put (kept when a row is overwritten)
        self._sketch_dims = sketch_dims  # 0: no sketch
        self.sketch: CosineSketch | None = None  # fitted again each time the catalogue doubles

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

    @property
    def matrix(self) -> np.ndarray:
        """The float32 vectors by row (:meth:`rows_of`), a read-only view; rows past the last
        item are zeros."""
        view = self._mat.view()
        view.flags.writeable = False
        return view

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
                if self.sketch is not None:
                    self.sketch.grow(self._mat.shape[0])
            self._ids.append(item_id)
            self._index[item_id] = row
        self._mat[row] = vec
        if len(vec):
            self._min = min(self._min, float(vec.min()))
        norm = float(np.linalg.norm(vec.astype(np.float64)))
        self._norms[row] = norm if norm > 0 else 1.0
        sketch = self.sketch
        fitted = 0 if sketch is None else sketch.fitted_rows
        if self._sketch_dims and len(self._ids) >= max(SKETCH_MIN_ROWS, 2 * fitted):
            self._fit_sketch()
        elif sketch is not None:
            sketch.set_rows(np.array([row]), vec[None, :])

    def _fit_sketch(self) -> None:
        """Fit the sketch's basis to a sample of the rows and sketch every row (each time the
        catalogue doubles: a put costs O(dim * r) amortised)."""
        n = len(self._ids)
        sample = np.unique(np.linspace(0, n - 1, min(n, SKETCH_SAMPLE)).astype(np.intp))
        sketch = CosineSketch.fit(self._mat[sample], self._sketch_dims, self._mat.shape[0])
        for start in range(0, n, 4096):
            rows = np.arange(start, min(n, start + 4096))
            sketch.set_rows(rows, self._mat[rows])
        sketch.fitted_rows = n
        self.sketch = sketch
