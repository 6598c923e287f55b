"""Item-item co-purchase counts, maintained per event (pure).

``co(i, j)`` counts the (customer, day) baskets holding both ``i`` and ``j``: when a customer buys
``b`` and the same day's basket already holds other items ``a`` (and not ``b``), each pair gets
one more count, symmetrically.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping


class CoPurchase:
    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = defaultdict(dict)

    def add_basket_item(self, item: str, basket: Iterable[str]) -> list[str]:
        """Count ``item`` joining a basket of other items; returns the rows that changed."""
        others = {a for a in basket if a != item}
        if not others:
            return []
        row = self.counts[item]
        for a in others:
            row[a] = row.get(a, 0) + 1
            other = self.counts[a]
            other[item] = other.get(item, 0) + 1
        return [item, *sorted(others)]

    def row(self, item: str) -> Mapping[str, int]:
        return self.counts.get(item, {})

    def neighbours(self, item: str, n: int) -> list[tuple[str, int]]:
        """The n items most often bought with ``item`` (count desc, then id)."""
        row = self.counts.get(item, {})
        return heapq.nsmallest(n, row.items(), key=lambda kv: (-kv[1], kv[0]))

    def scores(self, seeds: Mapping[str, float], per_seed: int = 50) -> dict[str, float]:
        """``cf_j = sum_i w_i * co(i, j)`` over seed items ``i`` with weights ``w_i``."""
        out: dict[str, float] = defaultdict(float)
        for seed, w in seeds.items():
            for j, c in self.neighbours(seed, per_seed):
                out[j] += w * c
        return dict(out)

    def cells(self) -> Iterator[tuple[str, dict[str, int]]]:
        yield from self.counts.items()

    def load_row(self, item: str, row: Mapping[str, int]) -> None:
        self.counts[item] = dict(row)
