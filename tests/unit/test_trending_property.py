"""Property: the incrementally ordered Trending equals a from-scratch recount over the window.

Random adds (items, kinds, counts, timestamps going forward and backward, inside and outside the
window, big jumps that expire everything) are checked after every add against a naive recount
written here from the definition in the module docstring: the window is the ``n_buckets`` buckets
ending at the newest bucket seen; an item's score is ``sum(kind_weight * count)`` over the window's
events; items scoring 0 are not listed; the order is score desc, then item id.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.ranking import Trending

MAX_EXAMPLES = 300
ITEMS = ["a", "b", "c", "d", "é", "z-9"]
WEIGHTS = [0.0, 0.3, 1.0, 2.5, 3.0]


class Recount:
    """Every event ever added, and the definition applied from scratch."""

    def __init__(self, window_s: float, bucket_s: int, weights: dict[str, float]) -> None:
        self.bucket_s = bucket_s
        self.n = max(1, math.ceil(window_s / bucket_s))
        self.weights = weights
        self.events: list[tuple[int, str, str, int]] = []  # (bucket, item, kind, count)
        self.now: int | None = None  # the newest bucket seen

    def add(self, item: str, kind: str, ts: float, count: int) -> None:
        bucket = int(ts // self.bucket_s)
        self.events.append((bucket, item, kind, count))
        self.now = bucket if self.now is None else max(self.now, bucket)

    def in_window(self, bucket: int) -> bool:
        return self.now is None or bucket > self.now - self.n

    def cells(self) -> dict[tuple[int, str], dict[str, int]]:
        out: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for b, item, kind, count in self.events:
            if self.in_window(b):
                out[(b, item)][kind] += count
        return out

    def scores(self) -> dict[str, float]:
        totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for (_, item), counts in self.cells().items():
            for kind, c in counts.items():
                totals[item][kind] += c
        scores = {
            item: float(sum(self.weights[k] * kc.get(k, 0) for k in sorted(self.weights)))
            for item, kc in totals.items()
        }
        return {i: s for i, s in scores.items() if s > 0}


def naive_top(scores: dict[str, float], k: int, exclude=frozenset()) -> list[tuple[str, float]]:
    ranked = sorted(
        ((i, s) for i, s in scores.items() if i not in exclude), key=lambda x: (-x[1], x[0])
    )
    return ranked[: max(k, 0)]


# one add: item, kind, count, and how far the clock jumps and how late the event is, in windows
_OP = st.tuples(
    st.sampled_from(ITEMS),
    st.sampled_from(["view", "purchase"]),
    st.integers(1, 5),
    st.one_of(st.just(0.0), st.floats(0, 0.5), st.sampled_from([0.1, 1.0, 10.0])),
    st.one_of(st.just(0.0), st.floats(0, 3.0)),  # late, maybe too late for the window
)


@st.composite
def scenarios(draw):
    bucket_s = draw(st.sampled_from([1, 5, 10]))
    window_s = draw(st.sampled_from([1.0, 10.0, 25.0, 30.0, 50.0]))
    weights = {
        "view": draw(st.sampled_from(WEIGHTS)),
        "purchase": draw(st.sampled_from(WEIGHTS)),
    }
    clock = draw(st.floats(-1e6, 1e6))
    ops = []
    for item, kind, count, jump, lag in draw(st.lists(_OP, min_size=1, max_size=40)):
        clock += jump * window_s  # forward: a jump of 1 or 10 windows expires everything
        ops.append((item, kind, clock - lag * window_s, count))
    exclude = frozenset(draw(st.sets(st.sampled_from(ITEMS), max_size=3)))
    return window_s, bucket_s, weights, ops, exclude


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_incremental_trending_equals_recount(scenario):
    window_s, bucket_s, weights, ops, exclude = scenario
    t = Trending(window_s=window_s, bucket_s=bucket_s, kind_weights=weights)
    ref = Recount(window_s, bucket_s, weights)
    assert t.n_buckets == ref.n
    held: set[tuple[int, str]] = set()  # the cells the trending table would hold
    for item, kind, ts, count in ops:
        ref.add(item, kind, ts, count)
        bucket, expired = t.add(item, kind, ts, count)
        b = int(ts // bucket_s)
        # the event's bucket when it is inside the window after the event, else None
        assert bucket == (b if ref.in_window(b) else None)
        assert t.now_bucket == ref.now
        # the cells returned as expired are exactly the held cells that left the window
        assert len(expired) == len(set(expired))
        assert set(expired) == {c for c in held if not ref.in_window(c[0])}
        held -= set(expired)
        if bucket is not None:
            held.add((bucket, item))
        want_cells = ref.cells()
        assert held == set(want_cells)
        assert {(bk, i): c for bk, i, c in t.cells()} == {
            key: [kc.get(k, 0) for k in sorted(weights)] for key, kc in want_cells.items()
        }
        scores = ref.scores()
        for i in [*ITEMS, "never"]:
            assert t.score(i) == scores.get(i, 0.0)
        assert t.scores([*ITEMS, "never"]).tolist() == [
            scores.get(i, 0.0) for i in [*ITEMS, "never"]
        ]
        assert t.max_score == max(scores.values(), default=0.0)
        n = len(scores)
        for k in {0, 1, 2, 3, n, n + 1}:
            assert t.top(k) == naive_top(scores, k)
            assert t.top(k, exclude) == naive_top(scores, k, exclude)
    assert t.newest_ts == max(ts for _, _, ts, _ in ops)

    # a fresh instance restored from the cells, in any order, continues identically
    cells = [(bk, i, list(c)) for bk, i, c in t.cells()]
    random.Random(len(ops)).shuffle(cells)
    r = Trending(window_s=window_s, bucket_s=bucket_s, kind_weights=weights)
    for bk, i, c in cells:
        r.load_cell(bk, i, c)
    if cells:
        assert r.top(len(ITEMS)) == t.top(len(ITEMS))
        assert r.max_score == t.max_score
        assert all(r.score(i) == t.score(i) for i in ITEMS)
