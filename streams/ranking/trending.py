"""Trending items: popularity over a recent event-time window, maintained incrementally (pure).

Counts are integers per (time bucket, item, kind), so adding and expiring never drifts; the score
is ``sum(kind_weight * count)`` over the buckets inside the window ending at the newest bucket seen.
Events older than the window are ignored (they could not change the list).

The order of the items by score is kept up to date as counts change (a sorted list keyed by
``(-score, item)``), so the top-N costs O(N) and a count change O(log items): nothing scans the
window per event or per user. Expiry (when the newest bucket moves on) re-scores only the items
of the buckets that fall out.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from types import MappingProxyType

import numpy as np
from sortedcontainers import SortedList


class Trending:
    def __init__(self, window_s: float, bucket_s: int, kind_weights: Mapping[str, float]) -> None:
        self.bucket_s = int(bucket_s)
        self.n_buckets = max(1, math.ceil(window_s / bucket_s))
        self.kinds = tuple(sorted(kind_weights))
        self.weights = dict(kind_weights)
        self.now_bucket: int | None = None
        self.newest_ts: float | None = None
        # bucket -> item -> [count per kind]
        self.buckets: dict[int, dict[str, list[int]]] = {}
        # item -> [count per kind] over the window
        self.totals: dict[str, list[int]] = defaultdict(lambda: [0] * len(self.kinds))
        self._score: dict[str, float] = {}  # item -> score, items with a positive score only
        self._order = SortedList()  # (-score, item) of the items in _score

    def bucket_of(self, ts: float) -> int:
        return int(ts // self.bucket_s)

    @property
    def oldest_bucket(self) -> int | None:
        """The first bucket inside the window (``None`` before the first event)."""
        return None if self.now_bucket is None else self.now_bucket - self.n_buckets + 1

    def in_window(self, bucket: int) -> bool:
        oldest = self.oldest_bucket
        return oldest is None or bucket >= oldest

    def add(
        self, item_id: str, kind: str, ts: float, count: int = 1
    ) -> tuple[int | None, list[tuple[int, str]]]:
        """Count one event.

        Returns the event's bucket (None when it is older than the window) and the cells
        (bucket, item) that fell out of the window, for the caller to delete from storage.
        """
        bucket = self.bucket_of(ts)
        if self.newest_ts is None or ts > self.newest_ts:
            self.newest_ts = ts
        expired = (
            self._advance(bucket) if self.now_bucket is None or bucket > self.now_bucket else []
        )
        if not self.in_window(bucket):
            return None, expired
        k = self.kinds.index(kind)
        counts = self.buckets.setdefault(bucket, {}).setdefault(item_id, [0] * len(self.kinds))
        counts[k] += count
        self.totals[item_id][k] += count
        self._rescore(item_id)
        return bucket, expired

    def counts(self, bucket: int, item_id: str) -> list[int]:
        return list(self.buckets.get(bucket, {}).get(item_id, [0] * len(self.kinds)))

    def _advance(self, bucket: int) -> list[tuple[int, str]]:
        self.now_bucket = bucket
        expired: list[tuple[int, str]] = []
        for old in [b for b in self.buckets if not self.in_window(b)]:
            for item_id, counts in self.buckets.pop(old).items():
                expired.append((old, item_id))
                total = self.totals[item_id]
                for k, c in enumerate(counts):
                    total[k] -= c
                if not any(total):
                    del self.totals[item_id]
                self._rescore(item_id)
        return expired

    def _weighted(self, counts: list[int]) -> float:
        return float(sum(self.weights[k] * c for k, c in zip(self.kinds, counts)))

    def _rescore(self, item_id: str) -> None:
        """Move the item to its place in the order after its totals changed."""
        old = self._score.get(item_id)
        counts = self.totals.get(item_id)
        new = self._weighted(counts) if counts else 0.0
        if old == new:
            return
        if old is not None:
            self._order.remove((-old, item_id))
            del self._score[item_id]
        if new > 0:
            self._score[item_id] = new
            self._order.add((-new, item_id))

    @property
    def score_map(self) -> Mapping[str, float]:
        """item -> score in the window, for the items with a positive one (read-only view)."""
        return MappingProxyType(self._score)

    def score(self, item_id: str) -> float:
        return self._score.get(item_id, 0.0)

    def scores(self, item_ids: Sequence[str]) -> np.ndarray:
        get = self._score.get
        return np.fromiter(
            map(get, item_ids, itertools.repeat(0.0)), dtype=np.float64, count=len(item_ids)
        )

    @property
    def max_score(self) -> float:
        """The highest score in the window (0 when empty)."""
        return -self._order[0][0] if self._order else 0.0

    def top(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The k most popular items in the window: score desc, then item id."""
        if k <= 0:
            return []
        kept = ((i, -neg) for neg, i in self._order if i not in exclude)
        return list(itertools.islice(kept, k))

    def cells(self) -> Iterator[tuple[int, str, list[int]]]:
        """All (bucket, item, counts) cells held, for persistence."""
        for bucket, items in self.buckets.items():
            for item_id, counts in items.items():
                yield bucket, item_id, counts

    def load_cell(self, bucket: int, item_id: str, counts: list[int]) -> None:
        """Restore one persisted cell (any order)."""
        if self.now_bucket is None or bucket > self.now_bucket:
            self._advance(bucket)
        if not self.in_window(bucket):
            return
        cell = self.buckets.setdefault(bucket, {}).setdefault(item_id, [0] * len(self.kinds))
        total = self.totals[item_id]
        for k, c in enumerate(counts):
            total[k] += c - cell[k]
            cell[k] = c
        self._rescore(item_id)
