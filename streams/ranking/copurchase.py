"""Item-item co-purchase counts, maintained per event, bounded per item (pure).

``co(i, j)`` counts the (customer, day) baskets holding both ``i`` and ``j``: when a customer buys
``b`` and the same day's basket already holds other items ``a`` (and not ``b``), each pair gets
one more count, symmetrically.

Each item's row keeps at most ``max_neighbours`` entries: after an increment, entries past the
first ``max_neighbours`` in the order (count desc, then item id) are dropped and their counts
forgotten. The rankers read only the head of a row (``cf_per_seed``), so a bound well above it
keeps the lists while the state per item stays fixed. Storage is one cell per (item, neighbour):
an increment writes a few bytes, not the whole row.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter

import numpy as np


class CoPurchase:
    def __init__(self, max_neighbours: int = 200) -> None:
        self.max_neighbours = max_neighbours
        self.counts: dict[str, dict[str, int]] = defaultdict(dict)
        # row -> its neighbours in rank order as (-count, neighbour, code), built when a row is
        # first read and kept in order on each increment (a move by bisection, not a re-sort)
        self._ranked: dict[str, list[tuple[int, str, int]]] = {}
        # row -> (neighbour codes, counts) of its head, in rank order; codes index self._names
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._code: dict[str, int] = {}
        self._names: list[str] = []

    def add_basket_item(
        self,
        item: str,
        basket: Iterable[str],
        counted: Callable[[str, str], bool] | None = None,
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Count ``item`` joining a basket of other items.

        ``counted(row, neighbour)``: True for a cell that already holds this count (restored
        after a crash), left as it is. Returns the cells (row, neighbour) whose count changed
        and those dropped by the bound.
        """
        others = sorted({a for a in basket if a != item})
        changed: list[tuple[str, str]] = []
        dropped: list[tuple[str, str]] = []
        for a in others:
            for row_id, other in ((item, a), (a, item)):
                if counted is not None and counted(row_id, other):
                    continue
                row = self.counts[row_id]
                old = row.get(other, 0)
                row[other] = old + 1
                self._moved(row_id, other, old)
                changed.append((row_id, other))
                if len(row) > self.max_neighbours:
                    for j in self._trim(row_id):
                        dropped.append((row_id, j))
        if dropped:
            gone = set(dropped)
            changed = [c for c in changed if c not in gone]
        return changed, dropped

    def _forget(self, row_id: str) -> None:
        self._ranked.pop(row_id, None)
        self._arrays.pop(row_id, None)

    def _moved(self, row_id: str, other: str, old: int) -> None:
        """Keep a row's rank order after ``other``'s count went from ``old`` to ``old + 1``."""
        self._arrays.pop(row_id, None)
        ranked = self._ranked.get(row_id)
        if ranked is None:
            return
        if old:
            del ranked[bisect_left(ranked, (-old, other))]  # (-old, other, code) follows it
        insort(ranked, (-old - 1, other, self._code_of(other)))

    def _code_of(self, item: str) -> int:
        code = self._code.get(item)
        if code is None:
            code = self._code[item] = len(self._names)
            self._names.append(item)
        return code

    def _rank(self, item: str) -> list[tuple[int, str, int]]:
        """The row's neighbours in rank order (count desc, then id), cached."""
        ranked = self._ranked.get(item)
        if ranked is None:
            code_of = self._code_of
            row = self.counts.get(item, {})
            ranked = sorted((-c, j, code_of(j)) for j, c in row.items())
            if row:
                self._ranked[item] = ranked
        return ranked

    def _trim(self, row_id: str) -> list[str]:
        row, ranked = self.counts[row_id], self._rank(row_id)
        gone = [j for _, j, _ in ranked[self.max_neighbours :]]
        del ranked[self.max_neighbours :]
        for j in gone:
            del row[j]
        self._arrays.pop(row_id, None)
        return gone

    def count(self, item: str, other: str) -> int:
        return self.counts.get(item, {}).get(other, 0)

    def row(self, item: str) -> Mapping[str, int]:
        return self.counts.get(item, {})

    def neighbours(self, item: str, n: int) -> list[tuple[str, int]]:
        """The n items most often bought with ``item`` (count desc, then id)."""
        return [(j, -neg) for neg, j, _ in self._rank(item)[:n]]

    def scores(self, seeds: Mapping[str, float], per_seed: int = 50) -> dict[str, float]:
        """``cf_j = sum_i w_i * co(i, j)`` over the top ``per_seed`` neighbours ``j`` of each
        seed item ``i`` with weight ``w_i`` (sums in seed order, then neighbour order)."""
        ids, sums = self.score_arrays(seeds, per_seed)
        return dict(zip(ids, sums.tolist()))

    def score_arrays(
        self, seeds: Mapping[str, float], per_seed: int = 50, limit: int | None = None
    ) -> tuple[list[str], np.ndarray]:
        """:meth:`scores` as (ids, sums); with ``limit``, only the ``limit`` best by (sum desc,
        then id)."""
        return self.score_arrays_of([seeds], per_seed, limit)[0]

    def score_arrays_of(
        self, users: Sequence[Mapping[str, float]], per_seed: int = 50, limit: int | None = None
    ) -> list[tuple[list[str], np.ndarray]]:
        """:meth:`score_arrays` for each of many users' seeds at once: the sums of all users
        are one ``bincount`` over (user, item code) keys, each a sum in the user's seed order,
        then neighbour order, as for one user alone."""
        out: list[tuple[list[str], np.ndarray]] = [([], np.zeros(0)) for _ in users]
        if limit is not None and limit <= 0:
            return out
        codes: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        weights: list[float] = []
        sizes: list[int] = []
        owners: list[int] = []
        for u, seeds in enumerate(users):
            for seed, w in seeds.items():
                head, count = self._neighbour_arrays(seed, per_seed)
                if len(head):
                    codes.append(head)
                    counts.append(count)
                    weights.append(w)
                    sizes.append(len(head))
                    owners.append(u)
        if not codes:
            return out
        n_codes = len(self._names)
        owner = np.repeat(np.array(owners, dtype=np.int64), sizes)
        keys, index = np.unique(owner * n_codes + np.concatenate(codes), return_inverse=True)
        parts = np.repeat(np.array(weights, dtype=np.float64), sizes) * np.concatenate(counts)
        sums = np.bincount(index.ravel(), weights=parts)
        key_owner, key_code = np.divmod(keys, n_codes)
        starts = np.searchsorted(key_owner, np.arange(len(users) + 1)).tolist()
        for u in sorted(set(owners)):
            mine, mine_sums = key_code[starts[u] : starts[u + 1]], sums[starts[u] : starts[u + 1]]
            if limit is not None and len(mine) > limit:
                keep = self._best(mine, mine_sums, limit)
                mine, mine_sums = mine[keep], mine_sums[keep]
            out[u] = _pick(self._names, mine.tolist()), mine_sums
        return out

    def _best(self, codes: np.ndarray, sums: np.ndarray, m: int) -> np.ndarray:
        """Positions of the ``m`` best sums by (sum desc, then item id)."""
        threshold = np.partition(sums, len(sums) - m)[len(sums) - m]
        above = np.flatnonzero(sums > threshold)
        tied = np.flatnonzero(sums == threshold)
        if len(above) + len(tied) > m:  # the boundary falls inside a tie: smaller ids first
            names = self._names
            tied = np.array(sorted(tied.tolist(), key=lambda j: names[codes[j]])[: m - len(above)])
        return np.concatenate([above, tied]).astype(np.intp)

    def _neighbour_arrays(self, item: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._arrays.get(item)
        if cached is None or (
            len(cached[0]) < n and len(cached[0]) < len(self.counts.get(item, ()))
        ):
            head = self._rank(item)[:n]
            cached = (
                np.fromiter((code for _, _, code in head), dtype=np.int64, count=len(head)),
                np.fromiter((-neg for neg, _, _ in head), dtype=np.float64, count=len(head)),
            )
            self._arrays[item] = cached
        ids, counts = cached
        return (ids, counts) if len(ids) <= n else (ids[:n], counts[:n])

    def cells(self) -> Iterator[tuple[str, str, int]]:
        for item, row in self.counts.items():
            for other, c in row.items():
                yield item, other, c

    def load_cell(self, item: str, other: str, count: int) -> None:
        self.counts[item][other] = count
        self._forget(item)


def _pick(names: list[str], codes: list[int]) -> list[str]:
    """``[names[c] for c in codes]`` in one C call (this is on the ranking's hot path)."""
    if len(codes) == 1:
        return [names[codes[0]]]
    return list(itemgetter(*codes)(names)) if codes else []
