"""streams.userstate: per-item decayed weights (the user vector's recipe), history, idempotency,
serialisation, exclusion policies.

The state no longer stores a vector: the vector is ``user_vector(state, catalogue)``, the weighted
mean of the catalogue's (float32) item vectors with the state's per-item weights. The tests that
compared vectors build a :class:`Catalogue` with the item vectors and compare against closed forms
computed from the same float32 vectors.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from state_canon import canon

from streams.catalogue import Catalogue
from streams.userstate import (
    DecayConfig,
    HistoryEntry,
    ItemStat,
    UserState,
    event_hash,
    excluded_items,
    user_vector,
)

WEIGHTS = {"purchase": 1.0, "view": 0.3}


def _cfg(half_life_s: float = 10.0, weights: dict[str, float] | None = None) -> DecayConfig:
    return DecayConfig(
        half_life_s=half_life_s, kind_weights=WEIGHTS if weights is None else weights
    )


def _vec(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


def _catalogue(vectors: dict[str, np.ndarray]) -> Catalogue:
    cat = Catalogue()
    for item_id, vec in vectors.items():
        cat.put(item_id, vec, {})
    return cat


def _fold_all(events, config: DecayConfig, user_id: str = "u", **kw) -> UserState:
    """Fold (item_id, kind, ts) events into a fresh state, in the given order."""
    state = UserState(user_id)
    for item_id, kind, ts in events:
        assert state.fold(item_id=item_id, kind=kind, ts=ts, config=config, **kw) is None
    return state


def _closed_form(events, vectors, config: DecayConfig) -> np.ndarray:
    """Decayed weighted mean of the items' (float32, as the catalogue stores them) vectors, each
    event decayed relative to the newest event time."""
    t_max = max(ts for _, _, ts in events)
    acc = 0.0
    wsum = 0.0
    for item_id, kind, ts in events:
        w = config.kind_weights.get(kind, 0.0) * 2.0 ** ((ts - t_max) / config.half_life_s)
        acc = acc + w * np.asarray(vectors[item_id], dtype=np.float32).astype(np.float64)
        wsum += w
    return acc / wsum


# ---------------------------------------------------------------- decayed mean


def test_decayed_mean_matches_hand_computation():
    # purchase of a=[1,0] at t=0, view of b=[0,1] one half-life later (t=10, half-life 10 s).
    # Relative to ref_ts=0: weights 1.0 * 2**0 = 1.0 and 0.3 * 2**1 = 0.6.
    # vw = {a: 1.0, b: 0.6}, wsum = 1.6, mean = [0.625, 0.375].
    cfg = _cfg(half_life_s=10.0)
    cat = _catalogue({"a": _vec(1, 0), "b": _vec(0, 1)})
    s = _fold_all([("a", "purchase", 0.0), ("b", "view", 10.0)], cfg)
    assert s.ref_ts == 0.0
    assert s.wsum == pytest.approx(1.6, rel=1e-15)
    assert s.items["a"].vw == 1.0
    assert s.items["b"].vw == pytest.approx(0.6, rel=1e-15)
    vec = user_vector(s, cat)
    assert vec.dtype == np.float64
    np.testing.assert_allclose(vec, [0.625, 0.375], rtol=1e-14)
    assert s.n_events == 2
    assert s.last_ts == 10.0


def test_decayed_mean_reverse_arrival_gives_same_vector():
    # Reverse arrival: ref_ts=10, view weight 0.3, purchase 1.0 * 2**-1 = 0.5 -> [0.5, 0.3] / 0.8.
    cfg = _cfg(half_life_s=10.0)
    cat = _catalogue({"a": _vec(1, 0), "b": _vec(0, 1)})
    s = _fold_all([("b", "view", 10.0), ("a", "purchase", 0.0)], cfg)
    assert s.ref_ts == 10.0
    assert s.wsum == pytest.approx(0.8, rel=1e-15)
    assert s.items["a"].vw == 0.5
    assert s.items["b"].vw == pytest.approx(0.3, rel=1e-15)
    np.testing.assert_allclose(user_vector(s, cat), [0.625, 0.375], rtol=1e-14)
    assert s.last_ts == 10.0  # newest, not latest arrived


def test_repeated_item_accumulates_its_weight():
    cfg = _cfg(half_life_s=10.0)
    cat = _catalogue({"a": _vec(1, 0), "b": _vec(0, 1)})
    s = _fold_all([("a", "view", 0.0), ("a", "purchase", 10.0), ("b", "view", 10.0)], cfg)
    # a: 0.3 * 1 + 1.0 * 2 = 2.3; b: 0.3 * 2 = 0.6
    assert s.items["a"].vw == pytest.approx(2.3, rel=1e-15)
    assert s.items["a"].rep == 2.0  # the purchase, decayed relative to ref_ts = 0
    assert s.items["a"].bought_ts == 10.0
    assert s.items["a"].touched_ts == 10.0
    np.testing.assert_allclose(user_vector(s, cat), [2.3 / 2.9, 0.6 / 2.9], rtol=1e-14)


def test_from_settings_maps_days_and_kind_weights():
    from streams.settings import Settings

    cfg = DecayConfig.from_settings(
        Settings(half_life_days=2.0, weight_view=0.25, weight_purchase=2.0)
    )
    assert cfg.half_life_s == 2 * 86_400.0
    assert dict(cfg.kind_weights) == {"view": 0.25, "purchase": 2.0}


def test_fold_changes_the_state_in_place():
    """Intentional change: ``fold`` mutates the state (the agent decodes, folds a batch, encodes
    once) instead of returning a new one; a snapshot is taken through the binary layout."""
    cfg = _cfg()
    s1 = _fold_all([("a", "purchase", 0.0)], cfg)
    snapshot = UserState.from_bytes(s1.to_bytes())
    assert s1.fold(item_id="b", kind="purchase", ts=5.0, config=cfg) is None
    assert s1.n_events == 2 and s1.history[-1].item_id == "b"
    assert list(s1.items) == ["a", "b"]
    assert snapshot.n_events == 1 and list(snapshot.items) == ["a"]
    assert snapshot.history[-1].item_id == "a"


@pytest.mark.parametrize("span_half_lives", [3.0, 200.0])
def test_fold_is_order_independent(span_half_lives: float):
    """Order independence of the vector; with 200 half-lives some arrivals rebase."""
    rng = random.Random(1234)
    nrng = np.random.default_rng(1234)
    cfg = _cfg(half_life_s=100.0)
    vectors = {f"i{n}": nrng.normal(size=16) for n in range(40)}
    events = [
        (
            f"i{n}",
            rng.choice(["view", "purchase"]),
            rng.uniform(0, span_half_lives * cfg.half_life_s),
        )
        for n in range(40)
    ]
    cat = _catalogue(vectors)
    base = _fold_all(sorted(events, key=lambda e: e[2]), cfg)
    expected = _closed_form(events, vectors, cfg)
    np.testing.assert_allclose(user_vector(base, cat), expected, rtol=0, atol=1e-12)
    for seed in range(5):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        s = _fold_all(shuffled, cfg)
        np.testing.assert_allclose(user_vector(s, cat), user_vector(base, cat), rtol=0, atol=1e-12)
        assert s.n_events == base.n_events == 40
        assert s.last_ts == base.last_ts == max(e[2] for e in events)
        assert s.wsum == pytest.approx(sum(st.vw for st in s.items.values()), rel=1e-12)


def test_rebase_for_long_gap_100_half_lives():
    cfg = _cfg(half_life_s=1.0)
    v1, v2 = _vec(1, 0, 0), _vec(0, 1, 0)
    cat = _catalogue({"a": v1, "b": v2})
    events = [("a", "purchase", 0.0), ("b", "view", 100.0)]
    s = _fold_all(events, cfg)
    assert s.ref_ts == 100.0  # exponent 100 > 60: the reference moved forward
    assert all(math.isfinite(st.vw) and math.isfinite(st.rep) for st in s.items.values())
    assert math.isfinite(s.wsum)
    # closed form relative to t=100: weights 1.0 * 2**-100 and 0.3
    w1, w2 = 2.0**-100, 0.3
    assert s.items["a"].vw == w1
    assert s.items["a"].rep == w1  # the repurchase count is rescaled with the weights
    expected = (w1 * v1 + w2 * v2) / (w1 + w2)
    vec = user_vector(s, cat)
    np.testing.assert_allclose(vec, expected, rtol=1e-14, atol=0)
    assert vec[0] > 0  # the old term is tiny but still present
    np.testing.assert_allclose(vec, _closed_form(events, {"a": v1, "b": v2}, cfg), rtol=1e-14)


def test_rebase_far_beyond_float_range_does_not_overflow():
    # 2**2000 overflows a float64: without rebasing math.pow would raise OverflowError.
    cfg = _cfg(half_life_s=1.0)
    cat = _catalogue({"a": _vec(1, 0), "b": _vec(0, 1), "c": _vec(1, 1), "d": _vec(9, 9)})
    s = _fold_all(
        [("a", "purchase", 0.0), ("b", "purchase", 2000.0), ("c", "purchase", 2000.0)], cfg
    )
    assert all(math.isfinite(st.vw) for st in s.items.values())
    assert math.isfinite(s.wsum) and s.wsum > 0
    # the t=0 term decays to 2**-2000 == 0.0: the mean of b and c remains
    assert s.items["a"].vw == 0.0
    np.testing.assert_allclose(user_vector(s, cat), [0.5, 1.0], rtol=1e-15)
    # and an old event arriving late is simply negligible, no NaN
    s.fold(item_id="d", kind="purchase", ts=-5000.0, config=cfg)
    np.testing.assert_allclose(user_vector(s, cat), [0.5, 1.0], rtol=1e-15)
    assert s.n_events == 4
    assert s.last_ts == 2000.0


# ---------------------------------------------------------------- weight-0 kinds


def test_weight_zero_kind_keeps_vector_but_counts_event():
    cfg = _cfg(weights={"purchase": 1.0, "view": 0.0})
    cat = _catalogue({"a": _vec(1, 0), "b": _vec(0, 1)})
    s = _fold_all([("a", "purchase", 0.0)], cfg)
    wsum = s.wsum
    s.fold(item_id="b", kind="view", ts=5.0, config=cfg)
    np.testing.assert_array_equal(user_vector(s, cat), [1.0, 0.0])
    assert s.wsum == wsum
    assert s.items["b"].vw == 0.0
    assert s.n_events == 2
    assert [h.item_id for h in s.history] == ["a", "b"]
    assert [h.kind for h in s.history] == ["purchase", "view"]
    assert list(s.items) == ["a", "b"]  # seen
    assert s.purchased == ["a"]
    assert s.last_ts == 5.0


def test_unknown_kind_has_weight_zero():
    cfg = _cfg()
    cat = _catalogue({"a": _vec(1, 0), "b": _vec(0, 1)})
    s = _fold_all([("a", "purchase", 0.0), ("b", "click", 1.0)], cfg)
    np.testing.assert_array_equal(user_vector(s, cat), [1.0, 0.0])
    assert s.n_events == 2 and list(s.items) == ["a", "b"]
    assert s.items["b"].bought_ts is None


def test_only_weight_zero_events_give_no_vector_then_first_weighted_event_is_the_mean():
    cfg = _cfg(weights={"purchase": 1.0, "view": 0.0})
    cat = _catalogue({"a": _vec(1, 0), "b": _vec(0, 1), "c": _vec(3, 4)})
    s = _fold_all([("a", "view", 0.0), ("b", "view", 1.0)], cfg)
    assert user_vector(s, cat) is None
    assert s.n_events == 2
    s.fold(item_id="c", kind="purchase", ts=500.0, config=cfg)
    np.testing.assert_allclose(user_vector(s, cat), [3.0, 4.0], rtol=1e-15)


def test_fresh_state_has_no_vector():
    assert user_vector(UserState("u"), Catalogue()) is None
    assert user_vector(UserState("u"), _catalogue({"a": _vec(1, 0)})) is None


def test_items_missing_from_the_catalogue_are_left_out_of_the_mean():
    cfg = _cfg()
    cat = _catalogue({"a": _vec(1, 0)})
    s = _fold_all([("a", "view", 0.0), ("ghost", "purchase", 0.0)], cfg)
    np.testing.assert_array_equal(user_vector(s, cat), [1.0, 0.0])
    assert user_vector(_fold_all([("ghost", "purchase", 0.0)], cfg), cat) is None


def test_user_vector_follows_a_re_uploaded_item_image():
    """New: the state keeps weights, not a vector, so a re-uploaded item reaches every user."""
    cfg = _cfg()
    cat = _catalogue({"a": _vec(1, 0), "b": _vec(0, 1)})
    s = _fold_all([("a", "purchase", 0.0), ("b", "purchase", 0.0)], cfg)
    np.testing.assert_allclose(user_vector(s, cat), [0.5, 0.5])
    cat.put("b", _vec(1, 0), {})
    np.testing.assert_allclose(user_vector(s, cat), [1.0, 0.0])


# ---------------------------------------------------------------- history, seen, purchased


def test_history_capped_at_history_len_oldest_dropped():
    cfg = _cfg()
    events = [(f"i{n}", "view", float(n)) for n in range(5)]
    s = _fold_all(events, cfg, history_len=3)
    assert [h.item_id for h in s.history] == ["i2", "i3", "i4"]
    assert [h.ts for h in s.history] == [2.0, 3.0, 4.0]
    assert s.n_events == 5


def test_seen_capped_at_max_seen_item_touched_longest_ago_dropped():
    """Intentional change: the state keeps at most ``max_seen`` distinct items and forgets the
    one whose newest event is oldest (not the one first seen); an item seen again after it was
    forgotten comes back at the end of the insertion order."""
    cfg = _cfg()
    items = ["a", "b", "a", "c", "d", "b", "e"]
    events = [(i, "view", float(n)) for n, i in enumerate(items)]
    s = _fold_all(events, cfg, max_seen=3)
    # a@0 b@1 a@2 c@3 -> {a:2, b:1, c:3}; d@4 drops b; b@5 drops a; e@6 drops c
    assert list(s.items) == ["d", "b", "e"]
    assert excluded_items(s, "seen") == frozenset({"b", "d", "e"})
    s_big = _fold_all(events, cfg, max_seen=100)
    assert list(s_big.items) == ["a", "b", "c", "d", "e"]


def test_evicted_item_weight_leaves_the_vector():
    """Intentional change: the vector is the weighted mean over at most ``max_seen`` distinct
    items; an item forgotten by the cap takes its weight (and its repurchase count) with it."""
    cfg = _cfg(half_life_s=1e9)
    cat = _catalogue({"a": _vec(1, 0, 0), "b": _vec(0, 1, 0), "c": _vec(0, 0, 1)})
    s = _fold_all(
        [("a", "purchase", 0.0), ("b", "purchase", 1.0), ("c", "view", 2.0)], cfg, max_seen=2
    )
    assert list(s.items) == ["b", "c"]
    wb, wc = s.items["b"].vw, s.items["c"].vw
    assert s.wsum == pytest.approx(wb + wc, rel=1e-15)
    np.testing.assert_allclose(user_vector(s, cat), [0.0, wb / (wb + wc), wc / (wb + wc)])
    assert s.purchased == ["b"] and "a" not in s.rep
    # the history still names the forgotten item
    assert [h.item_id for h in s.history] == ["a", "b", "c"]


def test_late_event_on_a_new_item_is_the_one_forgotten_at_the_cap():
    cfg = _cfg()
    s = _fold_all(
        [("a", "view", 10.0), ("b", "view", 11.0), ("old", "purchase", 1.0)], cfg, max_seen=2
    )
    assert list(s.items) == ["a", "b"]
    assert s.n_events == 3 and s.history[-1].item_id == "old"


def test_purchased_only_from_purchases():
    """Intentional change: ``purchased`` is a list in the items' first-touch order (the state's
    insertion order), not in first-purchase order."""
    cfg = _cfg()
    events = [
        ("a", "view", 0.0),
        ("b", "view", 1.0),
        ("c", "purchase", 2.0),
        ("a", "purchase", 3.0),
        ("c", "purchase", 4.0),
        ("d", "view", 5.0),
    ]
    s = _fold_all(events, cfg)
    assert s.purchased == ["a", "c"]
    assert list(s.items) == ["a", "b", "c", "d"]
    assert s.last_purchase == {"a": 3.0, "c": 4.0}
    assert s.rep == pytest.approx({"a": 2.0**0.3, "c": 2.0**0.2 + 2.0**0.4})


def test_purchased_capped_at_max_seen():
    cfg = _cfg()
    s = _fold_all([(f"p{n}", "purchase", float(n)) for n in range(4)], cfg, max_seen=2)
    assert s.purchased == ["p2", "p3"]


def test_newest_purchase_time_ignores_late_purchases():
    cfg = _cfg()
    s = _fold_all([("a", "purchase", 50.0), ("a", "purchase", 20.0)], cfg)
    assert s.items["a"].bought_ts == 50.0 and s.items["a"].touched_ts == 50.0
    assert s.last_ts == 50.0


def test_same_day_basket_uses_each_item_newest_purchase():
    cfg = _cfg()
    s = _fold_all(
        [
            ("a", "purchase", 5.0),
            ("b", "purchase", 12.0),
            ("c", "view", 13.0),
            ("a", "purchase", 25.0),
            ("d", "purchase", 19.0),
        ],
        cfg,
    )

    def day_of(ts: float) -> int:
        return int(ts // 10)

    assert s.same_day_basket(1, day_of) == {"b", "d"}
    assert s.same_day_basket(2, day_of) == {"a"}  # a's newest purchase moved to day 2
    assert s.same_day_basket(0, day_of) == set()


# ---------------------------------------------------------------- idempotency


def test_already_folded_by_offset_per_partition():
    cfg = _cfg()
    s = UserState("u")
    assert not s.already_folded(0, 0)
    s.fold(item_id="a", kind="view", ts=0.0, config=cfg, partition=0, offset=5)
    assert s.offsets == {0: 5}
    assert s.already_folded(0, 5)
    assert s.already_folded(0, 4)
    assert not s.already_folded(0, 6)
    assert not s.already_folded(1, 0)  # another partition is independent
    s.fold(item_id="b", kind="view", ts=1.0, config=cfg, partition=1, offset=2)
    assert s.offsets == {0: 5, 1: 2}
    assert s.already_folded(1, 2) and not s.already_folded(1, 3)
    # an older offset folded later never moves the mark back
    s.fold(item_id="c", kind="view", ts=2.0, config=cfg, partition=0, offset=3)
    assert s.offsets[0] == 5


def test_fold_without_partition_leaves_offsets_alone():
    cfg = _cfg()
    s = _fold_all([("a", "view", 0.0)], cfg)
    assert s.offsets == {}
    assert not s.already_folded(0, 0)


def test_already_folded_by_event_id_within_history():
    """Intentional change: the state keeps a 64-bit hash of each recent event id (in its history
    entries), not the id; a repeat is recognised within the last ``history_len`` events."""
    cfg = _cfg()
    s = UserState("u")
    for n in range(3):
        s.fold(
            item_id=f"i{n}",
            kind="view",
            ts=float(n),
            config=cfg,
            event_id=f"e{n}",
            history_len=2,
        )
    assert [h.event_hash for h in s.history] == [event_hash("e1"), event_hash("e2")]
    assert s.already_folded(7, 100, "e2")  # unseen partition/offset, known event id
    assert s.already_folded(7, 100, "e1")
    assert not s.already_folded(7, 100, "e0")  # dropped from the recent history
    assert not s.already_folded(7, 100, "e9")
    assert not s.already_folded(7, 100, "")  # no id: only the offset decides


def test_event_hash_is_a_stable_64_bit_value():
    h = event_hash("e1")
    assert 0 <= h < 2**64
    assert h == event_hash("e1") != event_hash("e2")
    assert event_hash("évènement-ü") == event_hash("évènement-ü")
    # blake2b-64 of the UTF-8 id, little endian: stable across processes (no PYTHONHASHSEED)
    import hashlib

    assert h == int.from_bytes(hashlib.blake2b(b"e1", digest_size=8).digest(), "little")


def test_empty_event_id_in_history_does_not_match_empty_query():
    cfg = _cfg()
    s = _fold_all([("a", "view", 0.0)], cfg)
    assert s.history[0].event_hash == 0
    assert not s.already_folded(0, 0, "")


# ---------------------------------------------------------------- serialisation


def test_to_bytes_from_bytes_round_trip_exact():
    cfg = _cfg(half_life_s=7.3)
    s = UserState("user-ü")
    for n in range(9):
        s.fold(
            item_id=f"i{n % 4}",
            kind="purchase" if n % 3 == 0 else "view",
            ts=0.1 + n * 3.7,
            config=cfg,
            partition=n % 2,
            offset=10 + n,
            event_id=f"ev-{n}",
            max_seen=3,
        )
    raw = s.to_bytes()
    back = UserState.from_bytes(raw)
    assert canon(back) == canon(s)
    assert back == s
    nrng = np.random.default_rng(7)
    cat = _catalogue({f"i{n}": nrng.normal(size=8) for n in range(4)})
    np.testing.assert_array_equal(user_vector(back, cat), user_vector(s, cat))
    assert back.to_bytes() == raw
    assert back.already_folded(0, 18, "") and not back.already_folded(0, 19, "")
    assert back.already_folded(1, 17, "") and not back.already_folded(1, 18, "")
    assert back.already_folded(5, 0, "ev-3")


def test_round_trip_of_empty_state():
    s = UserState("u")
    back = UserState.from_bytes(s.to_bytes())
    assert canon(back) == canon(s)
    assert user_vector(back, _catalogue({"a": _vec(1, 0)})) is None


def test_state_is_compact():
    """A few dozen bytes per distinct item, no dense vector."""
    cfg = _cfg()
    s = UserState("u")
    for n in range(100):
        s.fold(item_id=f"item{n:04d}", kind="view", ts=float(n), config=cfg, history_len=10)
    raw = s.to_bytes()
    assert len(raw) < 100 * 30 + 10 * 30 + 64


def test_round_trip_of_a_hand_made_state_with_inline_history_ids():
    s = UserState(
        "ü",
        wsum=1.5,
        ref_ts=-3.0,
        last_ts=9.0,
        n_events=3,
        items={"kept": ItemStat(vw=1.5, rep=0.5, bought_ts=-0.0, touched_ts=9.0)},
        history=[
            HistoryEntry("gone", "view", 1.0, 2**64 - 1),
            HistoryEntry("kept", "purchase", 9.0, 0),
        ],
        offsets={65535: -1, 0: 2**63 - 1},
    )
    back = UserState.from_bytes(s.to_bytes())
    assert canon(back) == canon(s)
    assert math.copysign(1.0, back.items["kept"].bought_ts) == -1.0


# ---------------------------------------------------------------- exclusion policies


def test_excluded_items_policies():
    cfg = _cfg()
    s = _fold_all([("a", "view", 0.0), ("b", "purchase", 1.0), ("c", "view", 2.0)], cfg)
    assert excluded_items(s, "none") == frozenset()
    assert excluded_items(s, "purchased") == frozenset({"b"})
    assert excluded_items(s, "seen") == frozenset({"a", "b", "c"})
    assert isinstance(excluded_items(s, "seen"), frozenset)
    with pytest.raises(ValueError, match="unknown exclusion policy"):
        excluded_items(s, "everything")
