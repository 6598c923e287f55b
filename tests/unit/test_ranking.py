"""streams.ranking (visual similarity, fill, Trending, the hybrid blend) and streams.recommend
(strategy choice, exclusion, trending fill, per-user and per-batch ranking)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import Counter
from collections.abc import Collection

import numpy as np
import pytest

from streams import recommend
from streams.catalogue import SKETCH_MIN_ROWS, Catalogue
from streams.ranking import Scored, Trending, fill, rank_by_similarity, top_trending
from streams.ranking.copurchase import CoPurchase
from streams.ranking.hybrid import (
    HybridWeights,
    blend,
    blend_parts,
    blend_rows,
    cosines_needed,
    hybrid_rank,
)
from streams.recommend import (
    RankConfig,
    RankContext,
    pair_cosines,
    rank_one,
    rank_states,
    to_record,
    visual_queries,
)
from streams.settings import Settings
from streams.userstate import DecayConfig, UserState

# ---------------------------------------------------------------- rank_by_similarity


def _cosine_reference(
    u: np.ndarray, cands: list[tuple[str, np.ndarray]]
) -> list[tuple[str, float]]:
    un = u / np.linalg.norm(u)
    out = []
    for i, v in cands:
        out.append((i, float(np.dot(v, un) / np.linalg.norm(v))))
    return sorted(out, key=lambda t: (-t[1], t[0]))


def test_rank_by_similarity_matches_numpy_cosine():
    rng = np.random.default_rng(0)
    u = rng.normal(size=32)
    cands = [(f"item{n:02d}", rng.normal(size=32).astype(np.float32)) for n in range(25)]
    ref = _cosine_reference(u, [(i, v.astype(np.float64)) for i, v in cands])
    got = rank_by_similarity(u, cands, k=10)
    assert [s.item_id for s in got] == [i for i, _ in ref[:10]]
    np.testing.assert_allclose([s.score for s in got], [s for _, s in ref[:10]], rtol=0, atol=1e-12)
    assert all(isinstance(s.score, float) for s in got)
    assert all(s.reason == "visual" for s in got)
    scores = [s.score for s in got]
    assert scores == sorted(scores, reverse=True)


def test_rank_by_similarity_hand_values_and_reason():
    u = np.array([1.0, 0.0])
    cands = [("x", np.array([0.0, 2.0])), ("y", np.array([3.0, 4.0])), ("z", np.array([-1.0, 0.0]))]
    got = rank_by_similarity(u, cands, k=3, reason="why")
    assert [(s.item_id, s.reason) for s in got] == [("y", "why"), ("x", "why"), ("z", "why")]
    assert got[0].score == pytest.approx(0.6, abs=1e-15)
    assert got[1].score == pytest.approx(0.0, abs=1e-15)
    assert got[2].score == pytest.approx(-1.0, abs=1e-15)


def test_rank_by_similarity_ties_broken_by_item_id():
    v = np.array([0.3, 0.4, 0.5])
    u = np.array([1.0, 1.0, 0.0])
    cands = [("c", v.copy()), ("a", v.copy()), ("b", v.copy()), ("d", np.array([0.0, 0.0, 1.0]))]
    got = rank_by_similarity(u, cands, k=4)
    assert [s.item_id for s in got] == ["a", "b", "c", "d"]
    assert got[0].score == got[1].score == got[2].score
    # same result whatever the candidate order
    got2 = rank_by_similarity(u, list(reversed(cands)), k=4)
    assert got2 == got


def test_rank_by_similarity_exclusion():
    u = np.array([1.0, 0.0])
    cands = [("a", np.array([1.0, 0.0])), ("b", np.array([1.0, 0.1])), ("c", np.array([0.0, 1.0]))]
    got = rank_by_similarity(u, cands, k=3, exclude={"a"})
    assert [s.item_id for s in got] == ["b", "c"]
    assert rank_by_similarity(u, cands, k=3, exclude={"a", "b", "c"}) == []


def test_rank_by_similarity_k_larger_than_candidates_and_k_zero():
    u = np.array([1.0, 0.0])
    cands = [("a", np.array([1.0, 0.0])), ("b", np.array([0.0, 1.0]))]
    assert [s.item_id for s in rank_by_similarity(u, cands, k=100)] == ["a", "b"]
    assert rank_by_similarity(u, cands, k=0) == []
    assert rank_by_similarity(u, [], k=5) == []


def test_rank_by_similarity_zero_user_vector_gives_empty():
    cands = [("a", np.array([1.0, 0.0])), ("b", np.array([0.0, 1.0]))]
    assert rank_by_similarity(np.zeros(2), cands, k=5) == []


def test_rank_by_similarity_zero_candidate_vector_scores_zero_not_nan():
    u = np.array([1.0, 0.0])
    got = rank_by_similarity(u, [("z", np.zeros(2)), ("a", np.array([-1.0, 0.0]))], k=2)
    assert [s.item_id for s in got] == ["z", "a"]
    assert got[0].score == 0.0 and not math.isnan(got[0].score)


def test_rank_is_scale_invariant_in_user_vector():
    rng = np.random.default_rng(3)
    u = rng.normal(size=8)
    cands = [(f"i{n}", rng.normal(size=8)) for n in range(10)]
    a = rank_by_similarity(u, cands, k=10)
    b = rank_by_similarity(u * 1e6, cands, k=10)
    assert [s.item_id for s in a] == [s.item_id for s in b]
    np.testing.assert_allclose([s.score for s in a], [s.score for s in b], atol=1e-12)


# ---------------------------------------------------------------- fill


def _s(item_id: str, score: float = 1.0, reason: str = "visual") -> Scored:
    return Scored(item_id, score, reason)


def test_fill_keeps_primary_order_and_skips_duplicates():
    primary = [_s("a", 0.9), _s("b", 0.5)]
    filler = [
        _s("b", 10, "trending"),
        _s("c", 9, "trending"),
        _s("a", 8, "trending"),
        _s("d", 7, "trending"),
    ]
    assert fill(primary, filler, 3) == [_s("a", 0.9), _s("b", 0.5), _s("c", 9, "trending")]
    assert fill(primary, filler, 10) == [
        _s("a", 0.9),
        _s("b", 0.5),
        _s("c", 9, "trending"),
        _s("d", 7, "trending"),
    ]


def test_fill_truncates_primary_and_handles_empty_inputs():
    primary = [_s("a"), _s("b"), _s("c")]
    assert fill(primary, [_s("z")], 2) == [_s("a"), _s("b")]
    assert fill([], [_s("x"), _s("x"), _s("y")], 5) == [_s("x"), _s("y")]
    assert fill(primary, [], 5) == primary
    assert fill(primary, [_s("z")], 0) == []


# ---------------------------------------------------------------- Trending

KW = {"view": 1.0, "purchase": 3.0}  # kinds are sorted: ("purchase", "view")


def _trending(window_s: float = 30.0, bucket_s: int = 10) -> Trending:
    return Trending(window_s=window_s, bucket_s=bucket_s, kind_weights=KW)


def test_trending_counts_within_window():
    t = _trending()
    assert t.n_buckets == 3
    assert t.kinds == ("purchase", "view")
    assert t.add("a", "view", 0.0) == (0, [])
    assert t.add("a", "view", 5.0) == (0, [])
    assert t.add("a", "purchase", 15.0) == (1, [])
    assert t.add("b", "view", 29.9, count=4) == (2, [])
    assert t.counts(0, "a") == [0, 2]
    assert t.counts(1, "a") == [1, 0]
    assert t.counts(2, "b") == [0, 4]
    assert t.counts(2, "zzz") == [0, 0]
    assert t.score("a") == 2 * 1.0 + 1 * 3.0
    assert t.score("b") == 4.0
    assert t.score("nobody") == 0.0
    assert t.top(10) == [("a", 5.0), ("b", 4.0)]
    assert t.max_score == 5.0
    assert Trending(window_s=30.0, bucket_s=10, kind_weights=KW).max_score == 0.0


def test_trending_expiry_returns_expired_cells():
    t = _trending()
    t.add("a", "view", 0.0)
    t.add("b", "view", 1.0)
    t.add("a", "purchase", 12.0)
    t.add("c", "view", 25.0)
    bucket, expired = t.add("c", "view", 30.0)  # bucket 3: window is now buckets 1..3
    assert bucket == 3
    assert sorted(expired) == [(0, "a"), (0, "b")]
    assert t.score("a") == 3.0  # only the purchase in bucket 1 is left
    assert t.score("b") == 0.0
    assert "b" not in t.totals  # nothing left: the item is dropped, not kept at zero
    assert t.counts(0, "a") == [0, 0]
    # jump far ahead: everything expires
    bucket, expired = t.add("d", "view", 1000.0)
    assert bucket == 100
    assert sorted(expired) == [(1, "a"), (2, "c"), (3, "c")]
    assert t.top(10) == [("d", 1.0)]
    assert t.max_score == 1.0  # the old maximum expired with its buckets
    assert set(t.totals) == {"d"}


def test_trending_late_events_ignored():
    t = _trending()
    t.add("a", "view", 35.0)  # now bucket 3, window buckets 1..3
    assert t.add("late", "purchase", 5.0) == (None, [])  # bucket 0: too old
    assert t.score("late") == 0.0
    assert t.top(10) == [("a", 1.0)]
    assert t.add("ok", "view", 10.0) == (1, [])  # bucket 1 is still inside the window
    assert t.score("ok") == 1.0
    assert t.now_bucket == 3  # a late event never moves the window


def test_trending_top_ordering_weights_tie_break_and_exclude():
    t = _trending(window_s=100.0, bucket_s=100)
    t.add("v3", "view", 1.0, count=3)  # 3.0
    t.add("p1", "purchase", 2.0)  # 3.0 (tie with v3, by id: p1 first)
    t.add("mix", "view", 3.0)
    t.add("mix", "purchase", 4.0)  # 4.0
    t.add("z", "view", 5.0)  # 1.0
    t.add("a", "view", 6.0)  # 1.0 (tie with z: a first)
    assert t.top(10) == [("mix", 4.0), ("p1", 3.0), ("v3", 3.0), ("a", 1.0), ("z", 1.0)]
    assert t.top(2) == [("mix", 4.0), ("p1", 3.0)]
    assert t.top(0) == []
    assert t.top(10, exclude={"mix", "a"}) == [("p1", 3.0), ("v3", 3.0), ("z", 1.0)]
    assert [s.item_id for s in top_trending(t, 3, exclude={"p1"})] == ["mix", "v3", "a"]
    assert all(s.reason == "trending" for s in top_trending(t, 3))


def test_trending_zero_weight_items_not_listed():
    t = Trending(window_s=10.0, bucket_s=10, kind_weights={"view": 0.0, "purchase": 1.0})
    t.add("viewed", "view", 1.0, count=5)
    t.add("bought", "purchase", 2.0)
    assert t.top(10) == [("bought", 1.0)]


def test_trending_window_rounds_up_to_whole_buckets():
    assert Trending(window_s=25.0, bucket_s=10, kind_weights=KW).n_buckets == 3
    assert Trending(window_s=1.0, bucket_s=10, kind_weights=KW).n_buckets == 1


def _brute_force(events, now_bucket: int, n_buckets: int) -> dict[str, list[int]]:
    kinds = ("purchase", "view")
    out: dict[str, list[int]] = {}
    for bucket, item, kind, count in events:
        if bucket > now_bucket - n_buckets:
            out.setdefault(item, [0, 0])[kinds.index(kind)] += count
    return {i: c for i, c in out.items() if any(c)}


def _expected_top(counts: dict[str, list[int]], k: int) -> list[tuple[str, float]]:
    scored = [(i, float(3.0 * c[0] + 1.0 * c[1])) for i, c in counts.items()]
    return sorted([x for x in scored if x[1] > 0], key=lambda x: (-x[1], x[0]))[:k]


def test_trending_counts_do_not_drift_over_many_add_expire_cycles():
    rng = random.Random(42)
    t = _trending(window_s=50.0, bucket_s=10)
    accepted = []
    now = None
    ts = 0.0
    for step in range(5000):
        # mostly forward, sometimes late (possibly out of the window)
        ts = ts + rng.uniform(0, 4) if rng.random() < 0.8 else ts
        ev_ts = ts - rng.uniform(0, 80) if rng.random() < 0.2 else ts
        item = f"i{rng.randrange(15)}"
        kind = rng.choice(["view", "purchase"])
        count = rng.randint(1, 3)
        bucket = int(ev_ts // 10)
        now = bucket if now is None else max(now, bucket)
        expect_in = bucket > now - t.n_buckets
        got_bucket, _ = t.add(item, kind, ev_ts, count=count)
        assert (got_bucket is not None) == expect_in
        if expect_in:
            assert got_bucket == bucket
            accepted.append((bucket, item, kind, count))
        if step % 250 == 0 or step == 4999:
            expected = _brute_force(accepted, now, t.n_buckets)
            assert {i: list(c) for i, c in t.totals.items()} == expected
            assert t.top(100) == _expected_top(expected, 100)
            # the per-bucket cells also sum to the totals
            summed: dict[str, Counter] = {}
            for _, item_id, counts in t.cells():
                summed.setdefault(item_id, Counter()).update(dict(enumerate(counts)))
            assert {i: [c[0], c[1]] for i, c in summed.items()} == expected
    assert t.now_bucket == now


def _populated() -> Trending:
    rng = random.Random(5)
    t = _trending(window_s=40.0, bucket_s=10)
    for n in range(300):
        t.add(
            f"i{rng.randrange(12)}", rng.choice(["view", "purchase"]), n * 0.3 + rng.uniform(0, 3)
        )
    return t


def test_cells_load_cell_round_trip_rebuilds_same_top():
    t = _populated()
    cells = [(b, i, list(c)) for b, i, c in t.cells()]
    assert len(cells) > 10
    for seed in [None, 1, 2, 3]:
        order = cells[:]
        if seed is not None:
            random.Random(seed).shuffle(order)
        r = _trending(window_s=40.0, bucket_s=10)
        for b, i, c in order:
            r.load_cell(b, i, c)
        assert r.now_bucket == t.now_bucket
        assert r.top(100) == t.top(100)
        assert {i: list(c) for i, c in r.totals.items()} == {
            i: list(c) for i, c in t.totals.items()
        }
        assert sorted((b, i, list(c)) for b, i, c in r.cells()) == sorted(cells)


def test_load_cell_restores_continuing_state():
    t = _populated()
    cells = [(b, i, list(c)) for b, i, c in t.cells()]
    random.Random(9).shuffle(cells)
    r = _trending(window_s=40.0, bucket_s=10)
    for b, i, c in cells:
        r.load_cell(b, i, c)
    # the same future events give the same list and expire the same cells
    for ts, item, kind in [(100.0, "i1", "view"), (115.0, "i2", "purchase"), (160.0, "i3", "view")]:
        ba, ea = t.add(item, kind, ts)
        bb, eb = r.add(item, kind, ts)
        assert ba == bb
        assert sorted(ea) == sorted(eb)
        assert r.top(100) == t.top(100)


def test_load_cell_skips_stale_cells_in_any_order():
    t = _populated()
    cells = [(b, i, list(c)) for b, i, c in t.cells()]
    stale = [(t.now_bucket - t.n_buckets, "ghost", [5, 5]), (t.now_bucket - 50, "i1", [9, 9])]
    for seed in range(4):
        order = cells + stale
        random.Random(seed).shuffle(order)
        r = _trending(window_s=40.0, bucket_s=10)
        for b, i, c in order:
            r.load_cell(b, i, c)
        assert r.top(100) == t.top(100)
        assert "ghost" not in r.totals


def test_load_cell_same_cell_twice_is_idempotent():
    r = _trending()
    r.load_cell(5, "a", [1, 2])
    r.load_cell(5, "a", [1, 2])
    assert r.score("a") == 1 * 3.0 + 2 * 1.0
    r.load_cell(5, "a", [0, 4])  # an updated value replaces the old one
    assert r.score("a") == 4.0
    assert r.counts(5, "a") == [0, 4]


# ---------------------------------------------------------------- strategy choice: visual ranker


def _settings(**kw) -> Settings:
    base = dict(
        ranker="visual",
        top_k=3,
        personalise_after=2,
        exclude="purchased",
        weight_view=0.3,
        weight_purchase=1.0,
        half_life_days=1.0,
    )
    base.update(kw)
    return Settings(**base)


CATALOGUE = {
    "p": np.array([1.0, 0.0], dtype=np.float32),
    "q": np.array([0.8, 0.6], dtype=np.float32),
    "r": np.array([0.0, 1.0], dtype=np.float32),
}


def _catalogue(vectors=CATALOGUE, payloads=None) -> Catalogue:
    cat = Catalogue()
    for item_id, vec in vectors.items():
        cat.put(item_id, vec, {})
    for item_id, payload in (payloads or {}).items():
        cat.put(item_id, None, payload)
    return cat


class InMemorySearch:
    """The vector store dependency: exact cosine search over an in-memory catalogue."""

    def __init__(self, catalogue: dict[str, np.ndarray]) -> None:
        self.catalogue = catalogue
        self.calls: list[tuple[np.ndarray, int, frozenset[str]]] = []

    def search(self, unit, limit, exclude):
        self.calls.append((unit, limit, exclude))
        hits = [(i, v) for i, v in self.catalogue.items() if i not in exclude]
        hits.sort(key=lambda h: -float(np.dot(h[1], unit) / np.linalg.norm(h[1])))
        return hits[:limit]

    async def __call__(self, unit, limit, exclude):
        return self.search(unit, limit, exclude)


def _user(settings: Settings, events, user_id: str = "u") -> UserState:
    cfg = DecayConfig.from_settings(settings)
    s = UserState(user_id)
    for item_id, kind, ts in events:
        s.fold(item_id=item_id, kind=kind, ts=ts, config=cfg)
    return s


def _trending_for_recs() -> Trending:
    t = Trending(window_s=86_400.0, bucket_s=3600, kind_weights={"view": 1.0, "purchase": 1.0})
    t.add("p", "view", 0.0, count=10)  # purchased by the user: excluded
    t.add("t1", "view", 0.0, count=5)
    t.add("q", "view", 0.0, count=4)
    t.add("t2", "view", 0.0, count=3)
    return t


def _context(
    settings: Settings,
    *,
    trending: Trending | None = None,
    catalogue: Catalogue | None = None,
    copurchase: CoPurchase | None = None,
) -> RankContext:
    return RankContext(
        RankConfig.from_settings(settings),
        trending=_trending_for_recs() if trending is None else trending,
        copurchase=CoPurchase() if copurchase is None else copurchase,
        catalogue=_catalogue() if catalogue is None else catalogue,
    )


def _rank_one(state: UserState, settings: Settings, search) -> tuple[list[Scored], str]:
    return asyncio.run(rank_one(state, _context(settings), search))


def test_rank_config_from_settings():
    s = _settings(top_k=7, exclude="seen", w_visual=0.25, half_life_days=2.0)
    cfg = RankConfig.from_settings(s)
    assert (cfg.ranker, cfg.k, cfg.exclude, cfg.personalise_after) == ("visual", 7, "seen", 2)
    assert cfg.half_life_s == 2 * 86_400.0
    assert cfg.weights == HybridWeights.from_settings(s)
    assert cfg.weights.vis == 0.25


def test_recommend_cold_user_gets_trending():
    settings = _settings()
    state = _user(settings, [("p", "purchase", 0.0)])  # 1 event < personalise_after=2
    search = InMemorySearch(CATALOGUE)
    ranked, strategy = _rank_one(state, settings, search)
    assert strategy == "trending"
    assert [(s.item_id, s.score, s.reason) for s in ranked] == [
        ("t1", 5.0, "trending"),
        ("q", 4.0, "trending"),
        ("t2", 3.0, "trending"),
    ]
    assert search.calls == []


def test_recommend_user_without_vector_gets_trending():
    settings = _settings(weight_view=0.0)
    state = _user(settings, [("q", "view", 0.0), ("r", "view", 1.0)])
    assert state.n_events == 2
    assert visual_queries({"u": state}, _context(settings)) == {}
    search = InMemorySearch(CATALOGUE)
    ranked, strategy = _rank_one(state, settings, search)
    assert strategy == "trending"
    assert [s.item_id for s in ranked] == ["p", "t1", "q"]  # nothing purchased: nothing excluded
    assert search.calls == []


def test_recommend_warm_user_visual_with_trending_filler():
    settings = _settings()
    # purchase p (w=1.0) and view r (w=0.3) at the same time: vector [1, 0.3] / 1.3
    state = _user(settings, [("p", "purchase", 0.0), ("r", "view", 0.0)])
    search = InMemorySearch(CATALOGUE)
    ranked, strategy = _rank_one(state, settings, search)
    assert strategy == "visual"
    norm = math.sqrt(1.0 + 0.09)
    q_score = (0.8 * 1.0 + 0.6 * 0.3) / norm  # q is a unit vector
    r_score = 0.3 / norm
    assert [(s.item_id, s.reason) for s in ranked] == [
        ("q", "visual"),
        ("r", "visual"),
        ("t1", "trending"),
    ]
    assert ranked[0].score == pytest.approx(q_score, abs=1e-6)  # q stored as float32
    assert ranked[1].score == pytest.approx(r_score, abs=1e-6)
    assert ranked[2].score == 5.0
    # the dependency was asked for 2k candidates without the purchased item, with a unit vector
    ((unit, limit, exclude),) = search.calls
    assert limit == 2 * settings.top_k
    assert exclude == frozenset({"p"})
    assert unit.dtype == np.float32
    assert float(np.linalg.norm(unit)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(unit, np.array([1.0, 0.3]) / norm, atol=1e-6)


def test_recommend_warm_user_exclusion_seen_policy():
    settings = _settings(exclude="seen")
    state = _user(settings, [("p", "purchase", 0.0), ("r", "view", 0.0)])
    search = InMemorySearch(CATALOGUE)
    ranked, strategy = _rank_one(state, settings, search)
    assert strategy == "visual"
    assert [(s.item_id, s.reason) for s in ranked] == [
        ("q", "visual"),
        ("t1", "trending"),
        ("t2", "trending"),
    ]
    assert search.calls[0][2] == frozenset({"p", "r"})


def test_recommend_excludes_even_if_search_returns_excluded_items():
    # a store that ignores the exclusion filter: the pure ranker still drops the items
    settings = _settings()
    state = _user(settings, [("p", "purchase", 0.0), ("r", "view", 0.0)])

    async def leaky(unit, limit, exclude):
        return list(CATALOGUE.items())[:limit]

    ranked, _ = _rank_one(state, settings, leaky)
    assert "p" not in [s.item_id for s in ranked]
    assert [s.item_id for s in ranked] == ["q", "r", "t1"]


def test_rank_states_batch_equals_rank_one_per_user():
    """The users agent ranks a batch against one context with the store's hits per user; the
    web API ranks one user: both give the same lists."""
    settings = _settings(personalise_after=1)
    states = {
        "cold": _user(settings, [], "cold"),
        "p": _user(settings, [("p", "purchase", 0.0)], "p"),
        "pr": _user(settings, [("p", "purchase", 0.0), ("r", "view", 5.0)], "pr"),
        "r": _user(settings, [("r", "view", 0.0), ("q", "view", 0.0)], "r"),
    }
    ctx = _context(settings)
    search = InMemorySearch(CATALOGUE)
    queries = visual_queries(states, ctx)
    assert set(queries) == {"p", "pr", "r"}
    found = {u: search.search(unit, 2 * settings.top_k, ex) for u, (unit, ex) in queries.items()}
    batch = rank_states(states, ctx, found)
    assert {u: strategy for u, (_, strategy) in batch.items()} == {
        "cold": "trending",
        "p": "visual",
        "pr": "visual",
        "r": "visual",
    }
    for user_id, state in states.items():
        assert asyncio.run(rank_one(state, ctx, search)) == batch[user_id]


def test_to_record_carries_the_as_of_point():
    ranked = [Scored("a", 0.5, "visual"), Scored("b", 0.25, "trending")]
    rec = to_record(
        "u", ranked, "visual", model_id="m", event_id="e9", event_ts=12.0, as_of=(3, 41)
    )
    assert (rec.user_id, rec.strategy, rec.model_id, rec.trigger) == ("u", "visual", "m", "event")
    assert (rec.event_id, rec.event_ts) == ("e9", 12.0)
    assert (rec.as_of_partition, rec.as_of_offset) == (3, 41)
    assert [(i.item_id, i.score, i.reason) for i in rec.items] == [
        ("a", 0.5, "visual"),
        ("b", 0.25, "trending"),
    ]
    plain = to_record("u", [], "trending", model_id="m", event_id=None, event_ts=None)
    assert plain.as_of_partition is None and plain.as_of_offset is None


# ---------------------------------------------------------------- strategy choice: hybrid ranker


def test_hybrid_strategy_choice():
    settings = _settings(ranker="hybrid", personalise_after=2, weight_view=0.0, exclude="none")
    ctx = _context(settings)
    states = {
        "cold": _user(settings, [("p", "purchase", 0.0)], "cold"),  # 1 event < 2
        "no-signal": _user(settings, [("q", "view", 0.0), ("r", "view", 1.0)], "no-signal"),
        "buyer": _user(settings, [("q", "view", 0.0), ("p", "purchase", 1.0)], "buyer"),
    }
    got = rank_states(states, ctx)
    assert got["cold"][1] == "trending"
    assert got["no-signal"][1] == "trending"  # no purchase and no vector (views weigh 0)
    assert got["buyer"][1] == "hybrid"
    assert got["cold"][0] == ctx.trending_list()
    # views with a weight give a vector: personal list without a purchase
    viewer = _user(_settings(ranker="hybrid", personalise_after=2), [("q", "view", 0.0)] * 2)
    assert rank_states({"u": viewer}, _context(settings))["u"][1] == "hybrid"


def test_hybrid_visual_part_is_the_cosine_for_head_and_own_candidates():
    """The head's cosines come from one matrix product in the context, the user's own candidates'
    from the catalogue: both are the cosine with the user vector."""
    settings = _settings(
        ranker="hybrid",
        personalise_after=1,
        exclude="none",
        top_k=2,
        w_repurchase=0.0,
        w_sibling=0.0,
        w_copurchase=0.0,
        w_popularity=0.0,
        w_visual=0.5,
    )
    trending = Trending(window_s=86_400.0, bucket_s=3600, kind_weights={"view": 1.0})
    trending.add("q", "view", 0.0, count=4)  # head item with a vector
    trending.add("t1", "view", 0.0, count=5)  # head item without a vector: cosine 0
    state = _user(settings, [("p", "purchase", 0.0), ("r", "view", 0.0)])  # p: own candidate
    ranked, strategy = rank_states({"u": state}, _context(settings, trending=trending))["u"]
    assert strategy == "hybrid"
    norm = math.sqrt(1.0 + 0.09)
    assert [(s.item_id, s.reason) for s in ranked] == [
        ("p", "visual"),
        ("q", "visual"),
    ]
    assert ranked[0].score == pytest.approx(0.5 * 1.0 / norm, abs=1e-6)
    assert ranked[1].score == pytest.approx(0.5 * (0.8 + 0.6 * 0.3) / norm, abs=1e-6)


def test_hybrid_price_weighting_and_popular_siblings():
    s = _settings(
        ranker="hybrid",
        top_k=4,
        personalise_after=1,
        exclude="none",
        half_life_days=30.0,
        w_repurchase=1.0,
        w_sibling=0.5,
        w_copurchase=0.0,
        w_visual=0.0,
        w_popularity=0.1,
        rep_price_exponent=1.0,
        sibling_pop_boost=1.0,
        pop_candidates=10,
    )
    cfg = DecayConfig.from_settings(s)
    state = UserState("u")
    for item in ("cheap", "dear"):  # the same day, cheap first
        state.fold(item_id=item, kind="purchase", ts=100.0, config=cfg)
    trending = Trending(window_s=86_400.0, bucket_s=3600, kind_weights={"purchase": 1.0})
    trending.add("dear-z", "purchase", 100.0, count=4)  # a popular sibling of "dear"
    trending.add("hit", "purchase", 100.0, count=9)
    cat = _catalogue(
        {},
        {
            "cheap": {"product_code": "1", "price": 0.01},
            "dear": {"product_code": "2", "price": 0.05},
            "dear-a": {"product_code": "2"},
            "dear-z": {"product_code": "2"},
        },
    )

    def run(**kw):
        ctx = _context(s.model_copy(update=kw), trending=trending, catalogue=cat)
        ranked, strategy = rank_states({"u": state}, ctx)["u"]
        assert strategy == "hybrid"
        return [r.item_id for r in ranked]

    # the dear purchase first; its popular sibling before the unpopular one
    assert run() == ["dear", "dear-z", "dear-a", "cheap"]
    # without prices both purchases tie (item id order) and outrank the siblings
    assert run(rep_price_exponent=0.0)[:2] == ["cheap", "dear"]
    # without the boost (and popularity) the siblings tie: item id order
    assert run(sibling_pop_boost=0.0, w_popularity=0.0)[1:3] == ["dear-a", "dear-z"]
    assert run(sibling_pop_boost=0.0, w_popularity=0.0, rep_price_exponent=0.0) == [
        "cheap", "dear", "dear-a", "dear-z"
    ]  # fmt: skip


def test_hybrid_copurchase_neighbours_of_recent_purchases():
    s = _settings(
        ranker="hybrid",
        top_k=2,
        personalise_after=1,
        exclude="purchased",
        w_repurchase=0.0,
        w_sibling=0.0,
        w_copurchase=1.0,
        w_visual=0.0,
        w_popularity=0.0,
    )
    co = CoPurchase()
    for _ in range(3):
        co.add_basket_item("x", ["seed"])
    co.add_basket_item("y", ["seed"])
    co.add_basket_item("z", ["other"])
    state = _user(s, [("seed", "purchase", 0.0)])
    ranked, strategy = rank_states({"u": state}, _context(s, copurchase=co))["u"]
    assert strategy == "hybrid"
    assert [(r.item_id, r.reason) for r in ranked] == [
        ("x", "copurchase"),
        ("y", "copurchase"),
    ]
    assert ranked[0].score == pytest.approx(1.0)
    assert ranked[1].score == pytest.approx(1.0 / 3.0)


# ---------------------------------------------------------------- hybrid blend


def test_price_weighted_relative_to_dearest_item():
    from streams.ranking.hybrid import price_weighted

    rep = {"a": 1.0, "b": 2.0, "c": 1.0}
    prices = {"a": 0.05, "b": 0.025}  # c has no price: weighs as the dearest
    assert price_weighted(rep, prices, 1.0) == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})
    assert price_weighted(rep, prices, 2.0) == pytest.approx({"a": 1.0, "b": 0.5, "c": 1.0})
    assert price_weighted(rep, prices, 0.0) == rep  # off
    assert price_weighted(rep, {}, 1.0) == rep  # no prices at all
    assert price_weighted(rep, {"a": 0.0, "b": 0.0}, 1.0) == rep  # unknown (0) prices


def test_boost_by_popularity():
    from streams.ranking.hybrid import boost_by_popularity

    sib = {"a": 1.0, "b": 1.0, "c": 2.0}
    pop = {"a": 8.0, "b": 0.0}  # c: not sold in the window
    out = boost_by_popularity(sib, pop, 8.0, 1.0)
    assert out == pytest.approx({"a": 2.0, "b": 1.0, "c": 2.0})
    half = boost_by_popularity(sib, {"a": 2.0}, 8.0, 0.5)
    assert half["a"] == pytest.approx(1.0 + 0.5 * math.log1p(2.0) / math.log1p(8.0))
    assert boost_by_popularity(sib, pop, 8.0, 0.0) == sib
    assert boost_by_popularity(sib, pop, 0.0, 1.0) == sib  # nothing popular: unchanged


def test_sibling_scores():
    from streams.ranking.hybrid import sibling_scores

    code_of = {"a": "1", "b": "1", "c": "1", "d": "2", "x": "3"}
    members = {"1": {"a", "b", "c"}, "2": {"d"}, "3": {"x"}}
    assert sibling_scores({"a": 1.0, "b": 0.5, "d": 2.0, "nocode": 9.0}, code_of, members) == {
        "a": 0.5,
        "b": 1.0,
        "c": 1.5,
    }


def test_hybrid_rank_blend_reasons_and_exclusion():
    w = HybridWeights(rep=1.0, sib=0.5, cf=0.3, vis=0.0, pop=0.2)
    ranked = hybrid_rank(
        candidates=["a", "b", "c", "d", "x"],
        rep={"a": 2.0, "x": 4.0},
        sib={"b": 1.0},
        cf={"c": 3.0},
        vis={},
        pop={"d": 9.0, "c": 1.0},
        weights=w,
        k=4,
        exclude={"x"},
    )
    # rep scaled by its max (x, excluded, still sets the scale): a = 0.5
    assert [(s.item_id, s.reason) for s in ranked] == [
        ("a", "repurchase"),
        ("b", "sibling"),
        ("c", "copurchase"),
        ("d", "trending"),
    ]
    assert ranked[0].score == pytest.approx(0.5)
    assert ranked[2].score == pytest.approx(0.3 + 0.2 * math.log1p(1.0) / math.log1p(9.0))
    assert all(isinstance(s.score, float) for s in ranked)


def test_hybrid_rank_equal_scores_ordered_by_item_id():
    w = HybridWeights(rep=1.0, sib=0.0, cf=0.0, vis=0.0, pop=0.0)
    rep = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 2.0, "e": 1.0}
    for order in itertools.permutations(["e", "c", "a", "d", "b"]):
        kw = dict(candidates=order, rep=rep, sib={}, cf={}, vis={}, pop={}, weights=w)
        assert [s.item_id for s in hybrid_rank(**kw, k=3)] == ["d", "a", "b"]
        # the k-th place falls inside a tie: the lowest ids of the tie are kept
        assert [s.item_id for s in hybrid_rank(**kw, k=2)] == ["d", "a"]
        assert [s.item_id for s in hybrid_rank(**kw, k=10)] == ["d", "a", "b", "c", "e"]
        assert [s.item_id for s in hybrid_rank(**kw, k=3, exclude={"a"})] == ["d", "b", "c"]
    assert hybrid_rank(**kw, k=0) == []
    assert hybrid_rank(**kw, k=3, exclude=set(rep)) == []
    assert hybrid_rank(candidates=[], rep=rep, sib={}, cf={}, vis={}, pop={}, weights=w, k=3) == []


_REASON = {
    "rep": "repurchase",
    "sib": "sibling",
    "cf": "copurchase",
    "vis": "visual",
    "pop": "trending",
}


def _one_item(signals: Collection[str], value: float = 1.0) -> list[Scored]:
    """Item "x" with contribution ``value`` from each signal in ``signals`` (weight 1, and its
    value the signal's maximum), 0 from the others."""
    w = HybridWeights(**{name: 1.0 if name in signals else 0.0 for name in _REASON})
    one = {"x": value}
    return hybrid_rank(
        candidates=["x"],
        rep=one,
        sib=one,
        cf=one,
        vis=one,
        pop={"x": 7.0},
        weights=w,
        k=1,
    )


@pytest.mark.parametrize("signals", [*itertools.combinations(_REASON, 2), tuple(_REASON)])
def test_hybrid_rank_reason_tie_goes_to_the_later_signal_name(signals):
    (got,) = _one_item(signals)
    assert got.score == pytest.approx(float(len(signals)))
    assert got.reason == _REASON[max(signals)]


@pytest.mark.parametrize("signal", list(_REASON))
def test_hybrid_rank_single_signal_reason(signal):
    (got,) = _one_item([signal])
    assert got.reason == _REASON[signal]
    assert got.score == pytest.approx(1.0)


def test_hybrid_rank_reason_is_the_largest_contribution():
    w = HybridWeights(rep=0.5, sib=0.0, cf=0.6, vis=0.55, pop=0.0)
    one = {"x": 1.0}
    (got,) = hybrid_rank(candidates=["x"], rep=one, sib={}, cf=one, vis=one, pop={}, weights=w, k=1)
    assert got.reason == "copurchase"
    assert got.score == pytest.approx(1.65)


def test_blend_keep_mask_excludes_but_still_scales():
    w = HybridWeights(rep=1.0, sib=0.0, cf=0.0, vis=0.0, pop=0.0)
    ids = ["a", "b", "c"]
    z = np.zeros(3)
    rep = np.array([1.0, 4.0, 2.0])
    got = blend(ids, rep=rep, sib=z, cf=z, vis=z, pop=z, weights=w, k=3,
                keep=np.array([True, False, True]))  # fmt: skip
    assert [(s.item_id, s.score) for s in got] == [("c", 0.5), ("a", 0.25)]
    assert blend(ids, rep=rep, sib=z, cf=z, vis=z, pop=z, weights=w, k=3,
                 keep=np.zeros(3, dtype=bool)) == []  # fmt: skip
    assert [s.item_id for s in blend(ids, rep=rep, sib=z, cf=z, vis=z, pop=z, weights=w, k=2)] == [
        "b",
        "c",
    ]


def test_a_users_hybrid_list_does_not_depend_on_who_else_is_ranked_with_them():
    """The same state gives the same items, scores, reasons and causes, to the last bit, alone,
    in a micro-batch or in a day-close slice of any size (a matrix product over the stacked
    users would sum each cosine in a shape-dependent order and move scores in the 8th digit,
    and break near-ties between two anchors of a visual reason either way). Half the items
    come in pairs whose vectors differ in the last bits: near-tied anchors."""
    rng = np.random.default_rng(7)
    dim, n_items = 1280, 300
    settings = _settings(ranker="hybrid", top_k=12, personalise_after=1, pop_candidates=100)
    vectors = {f"i{n}": rng.random(dim).astype(np.float32) for n in range(n_items)}  # ReLU-like
    for n in range(0, n_items, 4):  # i(n+1) is i(n) with a few coordinates 1 ulp away
        twin = vectors[f"i{n}"].copy()
        at = rng.choice(dim, size=3, replace=False)
        twin[at] = np.nextafter(twin[at], np.float32(np.inf))
        vectors[f"i{n + 1}"] = twin
    catalogue = _catalogue(vectors)
    trending = Trending(window_s=86_400.0, bucket_s=3600, kind_weights={"view": 1.0})
    for n in range(n_items):
        trending.add(f"i{n}", "view", 0.0, count=int(rng.integers(1, 50)))
    ctx = _context(settings, trending=trending, catalogue=catalogue)
    states = {}
    for u in range(120):
        picks = rng.choice(n_items, size=8, replace=False)
        events = [
            (f"i{j}", "purchase" if n % 3 == 0 else "view", float(n)) for n, j in enumerate(picks)
        ]
        states[f"u{u}"] = _user(settings, events, f"u{u}")
    alone = {u: rank_states({u: s}, ctx)[u] for u, s in states.items()}
    assert all(strategy == "hybrid" and len(ranked) == 12 for ranked, strategy in alone.values())
    reasons = Counter(s.reason for ranked, _ in alone.values() for s in ranked)
    assert reasons["visual"] > 100, reasons
    for size in (2, 7, 33, 120):
        users = rng.choice(list(states), size=size, replace=False).tolist()
        together = rank_states({u: states[u] for u in users}, ctx)
        for u in users:
            assert together[u] == alone[u], (u, size)


@pytest.mark.parametrize("seed", range(40))
def test_cosines_needed_skips_only_cosines_that_cannot_change_the_lists(seed):
    """Random rows of candidates (ties, exclusions, padding, signed and unsigned cosines): with
    every cosine outside ``cosines_needed`` replaced by any value in its range, the blend lists
    the same items with the same scores and reasons."""
    rng = np.random.default_rng(seed)
    n_rows, width, n_head, k = 6, 40, 10, int(rng.integers(1, 15))
    weights = HybridWeights(
        rep=1.0,
        sib=float(rng.choice([0.0, 0.7])),
        cf=0.3,
        vis=float(rng.choice([0.5, 2.0])),
        pop=0.3,
    )

    def sparse():
        return np.where(
            rng.random((n_rows, width)) < 0.3, rng.integers(0, 4, (n_rows, width)), 0
        ).astype(float)

    rep, sib, cf = sparse(), sparse(), sparse()
    pop = rng.integers(0, 5, (n_rows, width)).astype(float)
    keep = rng.random((n_rows, width)) < 0.9
    keep[:, width - int(rng.integers(0, 10)) :] = False  # padding
    for signal in (rep, sib, cf, pop):
        signal[:, width - 10 :] *= keep[:, width - 10 :]  # padding holds no signal
    low = rng.choice([0.0, -1.0], n_rows)
    cos = np.round(low[:, None] + (1 - low[:, None]) * rng.random((n_rows, width)), 1)  # ties
    known = np.zeros((n_rows, width), dtype=bool)
    known[:, :n_head] = True
    known[0] = True  # a user without a vector
    cos[0] = 0.0
    vis = np.where(known, cos, 0.0)
    needed = cosines_needed(
        parts=blend_parts(rep=rep, sib=sib, cf=cf, pop=pop, weights=weights),
        vis=vis,
        vis_known=known,
        vis_low=low[:, None],
        weights=weights,
        k=k,
        keep=keep,
    )
    assert not (needed & known).any() and not (needed & ~keep).any()
    item_at = lambda u, col: f"i{col:02d}"  # noqa: E731
    args = dict(rep=rep, sib=sib, cf=cf, pop=pop, weights=weights, k=k, keep=keep)
    full = blend_rows(item_at, vis=cos, **args)
    for fill_with in ("low", "high", "random"):
        other = {
            "low": np.broadcast_to(low[:, None], cos.shape),
            "high": np.ones_like(cos),
            "random": low[:, None] + (1 - low[:, None]) * rng.random(cos.shape),
        }[fill_with]
        partial = np.where(known | needed, cos, other)
        assert blend_rows(item_at, vis=partial, **args) == full


def test_cosines_needed_prunes_low_scoring_candidates():
    """One strong candidate per row and many weak ones: with k=1 no weak one's cosine can lift
    it over the strong one, so none is needed; with a large visual weight all are."""
    rep = np.zeros((1, 20))
    rep[0, 0] = 1.0
    pop = np.zeros((1, 20))
    keep = np.ones((1, 20), dtype=bool)
    known = np.zeros((1, 20), dtype=bool)
    signals = dict(rep=rep, sib=np.zeros_like(rep), cf=np.zeros_like(rep), pop=pop)
    args = dict(vis=np.zeros_like(rep), vis_known=known, vis_low=np.zeros((1, 1)), keep=keep)

    def needed(weights: HybridWeights, k: int) -> np.ndarray:
        parts = blend_parts(weights=weights, **signals)
        return cosines_needed(parts=parts, weights=weights, k=k, **args)

    assert needed(HybridWeights(vis=0.5), k=1).tolist() == [[True] + [False] * 19]
    assert needed(HybridWeights(vis=2.0), k=1).all()
    assert needed(HybridWeights(vis=0.5), k=2).all()


def test_catalogue_knows_whether_its_vectors_are_nonnegative():
    cat = Catalogue()
    cat.put("a", np.array([0.0, 1.0], dtype=np.float32), {})
    assert cat.nonnegative
    cat.put("b", np.array([0.5, -0.1], dtype=np.float32), {})
    assert not cat.nonnegative
    cat.put("b", np.array([0.5, 0.1], dtype=np.float32), {})
    assert not cat.nonnegative  # conservative: a bound, never recomputed


def test_an_items_cosine_does_not_depend_on_the_other_ids_or_their_order():
    """Candidates arrive in set order, which differs between processes: a restarted worker
    must score the same user to the last bit (a BLAS matrix-vector product over the gathered
    rows does not: its sums depend on the rows around each one)."""
    rng = np.random.default_rng(3)
    cat = _catalogue({f"i{n}": rng.random(1280).astype(np.float32) for n in range(400)})
    vec = rng.random(1280)

    def item_cosines(vec, ids, cat):  # one user's cosines, as the ranker gathers them
        unit = (vec / np.linalg.norm(vec)).astype(np.float32)[None, :]
        return pair_cosines(unit, np.zeros(len(ids), dtype=np.intp), cat.rows_of(ids), cat)

    ids = [f"i{n}" for n in range(400)] + ["missing"]
    ref = dict(zip(ids, item_cosines(vec, ids, cat).tolist()))
    assert ref["missing"] == 0.0
    assert ref["i5"] == pytest.approx(
        float(cat.vector("i5") @ vec / np.linalg.norm(cat.vector("i5")) / np.linalg.norm(vec)),
        rel=1e-6,
    )
    for size in (1, 3, 17, 64, 257):
        some = rng.choice(ids, size=size, replace=False).tolist()
        assert dict(zip(some, item_cosines(vec, some, cat).tolist())) == {i: ref[i] for i in some}


@pytest.mark.parametrize("signed", [False, True])
def test_the_catalogue_sketch_bounds_every_cosine(signed):
    """Each cosine the ranker computes (pair_cosines) lies inside the sketch's interval: for
    items fitted, put after the fit (beyond the matrix's first growth) and re-put, unsigned and
    signed vectors, zero vectors, and user vectors near and far from the sample the basis was
    fitted to."""
    rng = np.random.default_rng(11)
    dim = 96
    mix = rng.random((8, dim)) - (0.5 if signed else 0.0)  # a few directions, like features

    def vec() -> np.ndarray:
        v = rng.random(8) @ mix + 0.3 * (rng.random(dim) - (0.5 if signed else 0.0))
        return v.astype(np.float32)

    cat = Catalogue(sketch_dims=16)
    for n in range(SKETCH_MIN_ROWS - 1):
        cat.put(f"i{n}", vec(), {})
    assert cat.sketch is None  # too small to sketch
    for n in range(SKETCH_MIN_ROWS - 1, 1100):  # the matrix grows past 1,024 rows
        cat.put(f"i{n}", vec(), {})
    assert cat.sketch is not None and cat.sketch.fitted_rows == 1024  # fitted at 256, 512, 1,024
    cat.put("zero", np.zeros(dim, dtype=np.float32), {})
    cat.put("i3", vec(), {})  # re-put: its sketch follows
    ids = [*cat._ids]
    rows = cat.rows_of(ids)
    widths = []
    for n in range(40):
        user = rng.random(dim) - (0.5 if signed else 0.0) if n % 2 else rng.random(8) @ mix
        unit = (user / np.linalg.norm(user)).astype(np.float32)
        exact = pair_cosines(unit[None, :], np.zeros(len(rows), dtype=np.intp), rows, cat)
        coords, rest = cat.sketch.project_one(unit)
        low, high = cat.sketch.bounds(
            rows, np.tile(coords, (len(rows), 1)), np.full(len(rows), rest)
        )
        assert (low <= exact).all() and (exact <= high).all()
        widths.append(np.median(high - low))
    assert np.median(widths) < 0.5  # and the intervals are narrow enough to rule out cosines


def test_hybrid_lists_are_the_same_with_and_without_the_catalogue_sketch(monkeypatch):
    """The sketch only decides which cosines need computing (fewer of them): items, scores,
    reasons and causes are the same to the last bit as when every needed cosine comes from
    the vectors."""
    computed = Counter()

    def counted(units, user_at, rows, cat):
        computed[cat.sketch is not None] += len(rows)
        return pair_cosines(units, user_at, rows, cat)

    monkeypatch.setattr(recommend, "pair_cosines", counted)
    rng = np.random.default_rng(5)
    dim, n_items = 128, 600
    mix = rng.random((6, dim))
    vectors = {
        f"i{n}": (rng.random(6) ** 4 @ mix + rng.random(dim) ** 4).astype(np.float32)
        for n in range(n_items)
    }
    settings = _settings(
        ranker="hybrid", top_k=12, personalise_after=1, pop_candidates=20, w_copurchase=1.0
    )
    trending = Trending(window_s=86_400.0, bucket_s=3600, kind_weights={"view": 1.0})
    for n in range(0, n_items, 3):
        trending.add(f"i{n}", "view", 0.0, count=int(rng.integers(1, 30)))
    co = CoPurchase()
    for _ in range(3000):
        basket = [f"i{j}" for j in rng.choice(n_items, size=3, replace=False)]
        co.add_basket_item(basket[0], basket[1:])
    states = {}
    for u in range(150):
        picks = rng.choice(n_items, size=10, replace=False)
        events = [(f"i{j}", "purchase" if n % 2 else "view", float(n)) for n, j in enumerate(picks)]
        states[f"u{u}"] = _user(settings, events, f"u{u}")
    lists = []
    for sketch_dims in (8, 0):
        cat = Catalogue(sketch_dims=sketch_dims)
        for item_id, v in vectors.items():
            cat.put(item_id, v, {})
        assert (cat.sketch is not None) == bool(sketch_dims)
        ctx = _context(settings, trending=trending, catalogue=cat, copurchase=co)
        lists.append(rank_states(states, ctx))
    assert lists[0] == lists[1]
    reasons = Counter(s.reason for ranked, _ in lists[0].values() for s in ranked)
    assert reasons["visual"] > 50 and reasons["copurchase"] > 50, reasons
    assert 0 < computed[True] < computed[False], computed
