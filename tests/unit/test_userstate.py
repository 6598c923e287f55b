"""streams.userstate: the decayed weighted mean user vector, history, idempotency, serialisation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from streams.userstate import DecayConfig, UserState, excluded_items, fold_event

WEIGHTS = {"purchase": 1.0, "view": 0.3}


def _cfg(half_life_s: float = 10.0, weights: dict[str, float] | None = None) -> DecayConfig:
    return DecayConfig(
        half_life_s=half_life_s, kind_weights=WEIGHTS if weights is None else weights
    )


def _fold_all(events, config: DecayConfig, user_id: str = "u", **kw) -> UserState:
    state = UserState(user_id)
    for item_id, kind, ts, vec in events:
        state = fold_event(
            state, item_id=item_id, kind=kind, ts=ts, vector=vec, config=config, **kw
        )
    return state


def _closed_form(events, config: DecayConfig) -> np.ndarray:
    """Decayed weighted mean, each term decayed relative to the newest event time."""
    t_max = max(ts for _, _, ts, _ in events)
    acc = 0.0
    wsum = 0.0
    for _, kind, ts, vec in events:
        w = config.kind_weights.get(kind, 0.0) * 2.0 ** ((ts - t_max) / config.half_life_s)
        acc = acc + w * np.asarray(vec, dtype=np.float64)
        wsum += w
    return acc / wsum


def _vec(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


# ---------------------------------------------------------------- decayed mean


def test_decayed_mean_matches_hand_computation():
    # purchase of [1,0] at t=0, view of [0,1] one half-life later (t=10, half-life 10 s).
    # Relative to ref_ts=0: weights 1.0 * 2**0 = 1.0 and 0.3 * 2**1 = 0.6.
    # acc = [1.0, 0.6], wsum = 1.6, mean = [0.625, 0.375].
    cfg = _cfg(half_life_s=10.0)
    s = _fold_all([("a", "purchase", 0.0, _vec(1, 0)), ("b", "view", 10.0, _vec(0, 1))], cfg)
    assert s.ref_ts == 0.0
    assert s.wsum == pytest.approx(1.6, rel=1e-15)
    np.testing.assert_allclose(s.acc, [1.0, 0.6], rtol=1e-15)
    np.testing.assert_allclose(s.vector, [0.625, 0.375], rtol=1e-14)
    assert s.n_events == 2
    assert s.last_ts == 10.0


def test_decayed_mean_reverse_arrival_gives_same_vector():
    # Reverse arrival: ref_ts=10, view weight 0.3, purchase 1.0 * 2**-1 = 0.5 -> [0.5, 0.3] / 0.8.
    cfg = _cfg(half_life_s=10.0)
    s = _fold_all([("b", "view", 10.0, _vec(0, 1)), ("a", "purchase", 0.0, _vec(1, 0))], cfg)
    assert s.ref_ts == 10.0
    assert s.wsum == pytest.approx(0.8, rel=1e-15)
    np.testing.assert_allclose(s.acc, [0.5, 0.3], rtol=1e-15)
    np.testing.assert_allclose(s.vector, [0.625, 0.375], rtol=1e-14)
    assert s.last_ts == 10.0  # newest, not latest arrived


def test_from_settings_maps_days_and_kind_weights():
    from streams.settings import Settings

    cfg = DecayConfig.from_settings(
        Settings(half_life_days=2.0, weight_view=0.25, weight_purchase=2.0)
    )
    assert cfg.half_life_s == 2 * 86_400.0
    assert dict(cfg.kind_weights) == {"view": 0.25, "purchase": 2.0}


def test_fold_does_not_mutate_input_state():
    cfg = _cfg()
    s1 = _fold_all([("a", "purchase", 0.0, _vec(1, 0))], cfg)
    acc_before = s1.acc.copy()
    s2 = fold_event(s1, item_id="b", kind="purchase", ts=5.0, vector=_vec(0, 1), config=cfg)
    np.testing.assert_array_equal(s1.acc, acc_before)
    assert s1.n_events == 1 and s1.history[-1].item_id == "a"
    assert s2.n_events == 2


@pytest.mark.parametrize("span_half_lives", [3.0, 200.0])
def test_fold_is_order_independent(span_half_lives: float):
    rng = random.Random(1234)
    nrng = np.random.default_rng(1234)
    cfg = _cfg(half_life_s=100.0)
    events = [
        (
            f"i{n}",
            rng.choice(["view", "purchase"]),
            rng.uniform(0, span_half_lives * cfg.half_life_s),
            nrng.normal(size=16),
        )
        for n in range(40)
    ]
    base = _fold_all(sorted(events, key=lambda e: e[2]), cfg)
    expected = _closed_form(events, cfg)
    np.testing.assert_allclose(base.vector, expected, rtol=0, atol=1e-12)
    for seed in range(5):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        s = _fold_all(shuffled, cfg)
        np.testing.assert_allclose(s.vector, base.vector, rtol=0, atol=1e-12)
        assert s.n_events == base.n_events == 40
        assert s.last_ts == base.last_ts == max(e[2] for e in events)


def test_rebase_for_long_gap_100_half_lives():
    cfg = _cfg(half_life_s=1.0)
    v1, v2 = _vec(1, 0, 0), _vec(0, 1, 0)
    events = [("a", "purchase", 0.0, v1), ("b", "view", 100.0, v2)]
    s = _fold_all(events, cfg)
    assert s.ref_ts == 100.0  # exponent 100 > 60: the reference moved forward
    assert np.all(np.isfinite(s.acc)) and math.isfinite(s.wsum)
    # closed form relative to t=100: weights 1.0 * 2**-100 and 0.3
    w1, w2 = 2.0**-100, 0.3
    expected = (w1 * v1 + w2 * v2) / (w1 + w2)
    np.testing.assert_allclose(s.vector, expected, rtol=1e-14, atol=0)
    assert s.vector[0] > 0  # the old term is tiny but still present
    np.testing.assert_allclose(s.vector, _closed_form(events, cfg), rtol=1e-14)


def test_rebase_far_beyond_float_range_does_not_overflow():
    # 2**2000 overflows a float64: without rebasing math.pow would raise OverflowError.
    cfg = _cfg(half_life_s=1.0)
    v1, v2, v3 = _vec(1, 0), _vec(0, 1), _vec(1, 1)
    s = _fold_all(
        [("a", "purchase", 0.0, v1), ("b", "purchase", 2000.0, v2), ("c", "purchase", 2000.0, v3)],
        cfg,
    )
    assert np.all(np.isfinite(s.acc)) and math.isfinite(s.wsum) and s.wsum > 0
    # the t=0 term decays to 2**-2000 == 0.0: the mean of v2 and v3 remains
    np.testing.assert_allclose(s.vector, [0.5, 1.0], rtol=1e-15)
    # and an old event arriving late is simply negligible, no NaN
    s2 = fold_event(s, item_id="d", kind="purchase", ts=-5000.0, vector=_vec(9, 9), config=cfg)
    np.testing.assert_allclose(s2.vector, [0.5, 1.0], rtol=1e-15)
    assert s2.n_events == 4


# ---------------------------------------------------------------- weight-0 kinds


def test_weight_zero_kind_keeps_vector_but_counts_event():
    cfg = _cfg(weights={"purchase": 1.0, "view": 0.0})
    s1 = _fold_all([("a", "purchase", 0.0, _vec(1, 0))], cfg)
    s2 = fold_event(s1, item_id="b", kind="view", ts=5.0, vector=_vec(0, 1), config=cfg)
    np.testing.assert_array_equal(s2.vector, [1.0, 0.0])
    assert s2.wsum == s1.wsum
    np.testing.assert_array_equal(s2.acc, s1.acc)
    assert s2.n_events == 2
    assert [h.item_id for h in s2.history] == ["a", "b"]
    assert [h.kind for h in s2.history] == ["purchase", "view"]
    assert s2.seen == ("a", "b")
    assert s2.purchased == ("a",)
    assert s2.last_ts == 5.0


def test_unknown_kind_has_weight_zero():
    cfg = _cfg()
    s1 = _fold_all([("a", "purchase", 0.0, _vec(1, 0))], cfg)
    s2 = fold_event(s1, item_id="b", kind="click", ts=1.0, vector=_vec(0, 1), config=cfg)
    np.testing.assert_array_equal(s2.vector, [1.0, 0.0])
    assert s2.n_events == 2 and s2.seen == ("a", "b")


def test_only_weight_zero_events_give_no_vector_then_first_weighted_event_is_the_mean():
    cfg = _cfg(weights={"purchase": 1.0, "view": 0.0})
    s = _fold_all([("a", "view", 0.0, _vec(1, 0)), ("b", "view", 1.0, _vec(0, 1))], cfg)
    assert s.vector is None
    assert s.n_events == 2
    s = fold_event(s, item_id="c", kind="purchase", ts=500.0, vector=_vec(3, 4), config=cfg)
    np.testing.assert_allclose(s.vector, [3.0, 4.0], rtol=1e-15)


def test_fresh_state_has_no_vector():
    assert UserState("u").vector is None


# ---------------------------------------------------------------- history, seen, purchased


def test_history_capped_at_history_len_oldest_dropped():
    cfg = _cfg()
    events = [(f"i{n}", "view", float(n), _vec(1, 0)) for n in range(5)]
    s = _fold_all(events, cfg, history_len=3)
    assert [h.item_id for h in s.history] == ["i2", "i3", "i4"]
    assert [h.ts for h in s.history] == [2.0, 3.0, 4.0]
    assert s.n_events == 5


def test_seen_capped_at_max_seen_oldest_dropped_and_distinct():
    cfg = _cfg()
    items = ["a", "b", "a", "c", "d", "b", "e"]
    s = _fold_all([(i, "view", float(n), _vec(1, 0)) for n, i in enumerate(items)], cfg, max_seen=3)
    # distinct in first-seen order: a b c d e; the cap keeps the newest three
    assert s.seen == ("c", "d", "e")
    s_big = _fold_all(
        [(i, "view", float(n), _vec(1, 0)) for n, i in enumerate(items)], cfg, max_seen=100
    )
    assert s_big.seen == ("a", "b", "c", "d", "e")


def test_purchased_only_from_purchases():
    cfg = _cfg()
    events = [
        ("a", "view", 0.0, _vec(1, 0)),
        ("b", "view", 1.0, _vec(1, 0)),
        ("c", "purchase", 2.0, _vec(1, 0)),
        ("a", "purchase", 3.0, _vec(1, 0)),
        ("c", "purchase", 4.0, _vec(1, 0)),
        ("d", "view", 5.0, _vec(1, 0)),
    ]
    s = _fold_all(events, cfg)
    assert s.purchased == ("c", "a")
    assert s.seen == ("a", "b", "c", "d")


def test_purchased_capped_at_max_seen():
    cfg = _cfg()
    s = _fold_all([(f"p{n}", "purchase", float(n), _vec(1, 0)) for n in range(4)], cfg, max_seen=2)
    assert s.purchased == ("p2", "p3")


# ---------------------------------------------------------------- idempotency


def test_already_folded_by_offset_per_partition():
    cfg = _cfg()
    s = UserState("u")
    assert not s.already_folded(0, 0)
    s = fold_event(
        s, item_id="a", kind="view", ts=0.0, vector=_vec(1, 0), config=cfg, partition=0, offset=5
    )
    assert s.offsets == {0: 5}
    assert s.already_folded(0, 5)
    assert s.already_folded(0, 4)
    assert not s.already_folded(0, 6)
    assert not s.already_folded(1, 0)  # another partition is independent
    s = fold_event(
        s, item_id="b", kind="view", ts=1.0, vector=_vec(1, 0), config=cfg, partition=1, offset=2
    )
    assert s.offsets == {0: 5, 1: 2}
    assert s.already_folded(1, 2) and not s.already_folded(1, 3)
    # an older offset folded later never moves the mark back
    s = fold_event(
        s, item_id="c", kind="view", ts=2.0, vector=_vec(1, 0), config=cfg, partition=0, offset=3
    )
    assert s.offsets[0] == 5


def test_fold_without_partition_leaves_offsets_alone():
    cfg = _cfg()
    s = fold_event(UserState("u"), item_id="a", kind="view", ts=0.0, vector=_vec(1, 0), config=cfg)
    assert s.offsets == {}
    assert not s.already_folded(0, 0)


def test_already_folded_by_event_id_within_history():
    cfg = _cfg()
    s = UserState("u")
    for n in range(3):
        s = fold_event(
            s,
            item_id=f"i{n}",
            kind="view",
            ts=float(n),
            vector=_vec(1, 0),
            config=cfg,
            event_id=f"e{n}",
            history_len=2,
        )
    assert s.already_folded(7, 100, "e2")  # unseen partition/offset, known event id
    assert s.already_folded(7, 100, "e1")
    assert not s.already_folded(7, 100, "e0")  # dropped from the recent history
    assert not s.already_folded(7, 100, "e9")
    assert not s.already_folded(7, 100, "")  # no id: only the offset decides


def test_empty_event_id_in_history_does_not_match_empty_query():
    cfg = _cfg()
    s = fold_event(UserState("u"), item_id="a", kind="view", ts=0.0, vector=_vec(1, 0), config=cfg)
    assert s.history[0].event_id == ""
    assert not s.already_folded(0, 0, "")


# ---------------------------------------------------------------- serialisation


def _assert_same_state(a: UserState, b: UserState) -> None:
    assert a.user_id == b.user_id
    if a.acc is None:
        assert b.acc is None
    else:
        assert b.acc.dtype == np.float64
        assert a.acc.tobytes() == b.acc.tobytes()  # bit-exact
    assert a.wsum == b.wsum
    assert a.ref_ts == b.ref_ts
    assert a.last_ts == b.last_ts
    assert a.n_events == b.n_events
    assert a.history == b.history
    assert a.seen == b.seen
    assert a.purchased == b.purchased
    assert dict(a.offsets) == dict(b.offsets)
    assert all(isinstance(p, int) for p in b.offsets)


def test_to_bytes_from_bytes_round_trip_exact():
    cfg = _cfg(half_life_s=7.3)
    nrng = np.random.default_rng(7)
    s = UserState("user-ü")
    for n in range(6):
        s = fold_event(
            s,
            item_id=f"i{n % 4}",
            kind="purchase" if n % 3 == 0 else "view",
            ts=0.1 + n * 3.7,
            vector=nrng.normal(size=8),
            config=cfg,
            partition=n % 2,
            offset=10 + n,
            event_id=f"ev-{n}",
        )
    raw = s.to_bytes()
    back = UserState.from_bytes(raw)
    _assert_same_state(s, back)
    np.testing.assert_array_equal(back.vector, s.vector)
    assert back.to_bytes() == raw
    assert back.already_folded(1, 15, "") and not back.already_folded(1, 16, "")
    assert back.already_folded(5, 0, "ev-3")


def test_round_trip_of_empty_state():
    s = UserState("u")
    back = UserState.from_bytes(s.to_bytes())
    _assert_same_state(s, back)
    assert back.vector is None


# ---------------------------------------------------------------- exclusion policies


def test_excluded_items_policies():
    cfg = _cfg()
    s = _fold_all(
        [
            ("a", "view", 0.0, _vec(1, 0)),
            ("b", "purchase", 1.0, _vec(1, 0)),
            ("c", "view", 2.0, _vec(1, 0)),
        ],
        cfg,
    )
    assert excluded_items(s, "none") == frozenset()
    assert excluded_items(s, "purchased") == frozenset({"b"})
    assert excluded_items(s, "seen") == frozenset({"a", "b", "c"})
    assert isinstance(excluded_items(s, "seen"), frozenset)
    with pytest.raises(ValueError, match="unknown exclusion policy"):
        excluded_items(s, "everything")
