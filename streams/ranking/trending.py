"""Trending items: popularity over a recent event-time window, maintained incrementally (pure).

Counts are integers per (time bucket, item, kind), so adding and expiring never drifts; the score
is ``sum(kind_weight * count)`` over the buckets inside the window ending at the newest bucket seen.
Events older than the window are ignored (they could not change the list).
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping


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
        return expired

    def score(self, item_id: str) -> float:
        counts = self.totals.get(item_id)
        if not counts:
            return 0.0
        return float(sum(self.weights[k] * c for k, c in zip(self.kinds, counts)))

    def top(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The k most popular items in the window: score desc, then item id."""
        scored = ((self.score(i), i) for i in self.totals if i not in exclude)
        best = heapq.nsmallest(k, ((-s, i) for s, i in scored if s > 0))
        return [(i, -neg) for neg, i in best]

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
