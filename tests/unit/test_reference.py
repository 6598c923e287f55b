"""The pipeline tests' oracle (tests/reference.py) on cases small enough to work out by hand."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from reference import (
    Expected,
    RefConfig,
    check_recommendations,
    compare,
    expected_at,
    expected_recommendations,
)

DAY = 86_400.0
A, B, C = "A", "B", "C"
EMB = {
    A: np.array([1.0, 0.0], np.float32),
    B: np.array([0.0, 1.0], np.float32),
    C: np.array([1.0, 1.0], np.float32) / np.float32(math.sqrt(2.0)),
}
# A and C: one product in two colours; only A and C have a price
PAYLOADS = {
    A: {"product_code": "p1", "price": 10.0},
    B: {"product_code": "p2"},
    C: {"product_code": "p1", "price": 20.0},
}


def cfg(**kw) -> RefConfig:
    base = dict(
        half_life_s=DAY,
        weights={"view": 0.3, "purchase": 1.0},
        exclude="none",
        k=3,
        personalise_after=1,
        window_s=7 * DAY,
        bucket_s=int(DAY),
        channel_weights={1: 2},
        ranker="hybrid",
    )
    return RefConfig(**{**base, **kw})


def rec_(offset: int, user: str, item: str, kind: str, ts: float, eid: str | None = None):
    doc = {"event_id": eid or f"e{offset}", "user_id": user, "item_id": item, "ts": ts}
    doc["kind"] = kind
    return SimpleNamespace(partition=0, offset=offset, value=json.dumps(doc).encode())


def tick(offset: int, ts: float):
    return SimpleNamespace(partition=0, offset=offset, value=json.dumps({"kind": "tick", "ts": ts}))


# u1 buys A then B on day 0 (one basket: co(A, B) = 1); u2 views C, then buys A on day 1
T0, T1 = 0.5 * DAY, 0.5 * DAY + 3600
T2, T3 = 1.5 * DAY, 1.5 * DAY + 3600
RECORDS = [
    rec_(0, "u1", A, "purchase", T0),
    rec_(1, "u1", B, "purchase", T1),
    rec_(2, "u2", C, "view", T2),
    rec_(3, "u2", A, "purchase", T3),
]
H = 2.0 ** (-1 / 24)  # one hour of decay with a one-day half-life


def cos(u, item: str) -> float:
    v = EMB[item].astype(np.float64)
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def assert_items(got, want, tol=1e-12):
    assert [i for i, _ in got.items] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got.items], [s for _, s in want], rtol=0, atol=tol)


def test_hybrid_by_hand_u2_after_everything():
    exp = expected_at(RECORDS, "u2", EMB, PAYLOADS, cfg())
    # popularity: A bought by two customers (2), B once (1), C viewed once (0.3)
    log3 = math.log1p(2.0)
    # u2's vector: A (purchase, weight 1 at T3) + C (view, 0.3 one hour earlier)
    u = 1.0 * EMB[A].astype(np.float64) + 0.3 * H * EMB[C].astype(np.float64)
    # rep {A: 1} (its price is the user's dearest); sibling C gets rep(A), boosted by C's
    # popularity: 1 + log1p(0.3)/log1p(2); cf from seed A (weight 1): co(A, B) = 1
    score_a = 1.0 + 0.5 * cos(u, A) + 0.3
    score_c = 0.45 * 1.0 + 0.5 * cos(u, C) + 0.3 * math.log1p(0.3) / log3
    score_b = 0.15 * 1.0 + 0.5 * cos(u, B) + 0.3 * math.log1p(1.0) / log3
    assert exp.strategy == "hybrid" and exp.event_id == "e3" and exp.user_id == "u2"
    assert_items(exp, [(A, score_a), (C, score_c), (B, score_b)])
    # reasons: the largest contribution (B: popularity 0.19 beats co-purchase 0.15)
    assert exp.reasons == (
        frozenset({"repurchase"}),
        frozenset({"sibling"}),
        frozenset({"trending"}),
    )


def test_hybrid_by_hand_u1_as_of_its_basket():
    exp = expected_at(RECORDS[:2], "u1", EMB, PAYLOADS, cfg())
    # popularity A 1, B 1. rep: A bought an hour before B; B has no price (weighs as the
    # dearest) -> rep {A: H, B: 1}; sibling C <- rep(A), no boost (C's popularity is 0);
    # cf: seeds B (weight 1) and A (weight H): cf {A: 1, B: H}
    u = H * EMB[A].astype(np.float64) + 1.0 * EMB[B].astype(np.float64)
    score_a = H + 0.15 * 1.0 + 0.5 * cos(u, A) + 0.3
    score_b = 1.0 + 0.15 * H + 0.5 * cos(u, B) + 0.3
    score_c = 0.45 * 1.0 + 0.5 * cos(u, C)
    assert_items(exp, [(B, score_b), (A, score_a), (C, score_c)])
    # C: cos(u, C) is 0.9996, so its visual part (0.4998) beats its sibling part (0.45)
    assert exp.reasons == (
        frozenset({"repurchase"}),
        frozenset({"repurchase"}),
        frozenset({"visual"}),
    )


def test_prices_weigh_repurchase():
    # u3 buys A (price 10) and C (price 20) at the same moment: rep A = 0.5, C = 1
    records = [rec_(0, "u3", A, "purchase", T0), rec_(1, "u3", C, "purchase", T0)]
    only = dict(w_vis=0.0, w_pop=0.0, w_cf=0.0)
    exp = expected_at(records, "u3", EMB, PAYLOADS, cfg(**only))
    # siblings: A <- rep(C) = 1, C <- rep(A) = 0.5, both x2 by the popularity boost (each
    # bought once, the window's maximum): scaled to A 1, C 0.5
    assert_items(exp, [(C, 1.0 + 0.45 * 0.5), (A, 0.5 + 0.45 * 1.0)])
    # without a catalogue: no prices (rep A = C = 1), no siblings
    flat = expected_at(records, "u3", EMB, {}, cfg(**only))
    assert_items(flat, [(A, 1.0), (C, 1.0)])
    # price exponent 0: prices ignored
    unpriced = expected_at(records, "u3", EMB, PAYLOADS, cfg(price_exponent=0.0, **only))
    assert_items(unpriced, [(A, 1.0 + 0.45), (C, 1.0 + 0.45)])


def test_trending_strategy_when_not_personal_and_fill():
    # personalise_after 3: u2 with two events gets the trending list
    exp = expected_at(RECORDS, "u2", EMB, PAYLOADS, cfg(personalise_after=3))
    assert exp.strategy == "trending"
    assert exp.items == [(A, 2.0), (B, 1.0), (C, pytest.approx(0.3))]
    # exclusion of purchases, k = 3: u1 has bought A and B; only C is left, no filler
    exp = expected_at(RECORDS, "u1", EMB, PAYLOADS, cfg(exclude="purchased"))
    assert [i for i, _ in exp.items] == [C]


def test_visual_ranker():
    exp = expected_at(RECORDS, "u2", EMB, PAYLOADS, cfg(ranker="visual", exclude="purchased"))
    u = 1.0 * EMB[A].astype(np.float64) + 0.3 * H * EMB[C].astype(np.float64)
    assert exp.strategy == "visual"
    assert_items(exp, [(C, cos(u, C)), (B, cos(u, B))])


def test_repeats_ticks_distinct_buyers_and_channels():
    records = [
        rec_(0, "u1", A, "purchase", T0),
        tick(1, T1),
        rec_(2, "u1", A, "purchase", T0, eid="e0"),  # redelivered: same event id
        rec_(3, "u1", A, "purchase", T1),  # bought again in the window: counts 0
        rec_(4, "u2", B, "purchase", T1),
    ]
    store = json.loads(records[4].value)
    store["channel"] = 1  # a store purchase weighs 2
    records[4].value = json.dumps(store).encode()
    exp = expected_at(records, "u1", EMB, PAYLOADS, cfg(personalise_after=5))
    assert exp.strategy == "trending" and exp.event_id == "e3"
    assert exp.items == [(B, 2.0), (A, 1.0)]
    per_event = expected_recommendations(records, EMB, cfg(), PAYLOADS)
    assert sorted(per_event) == ["e0", "e3", "e4"]


def test_copurchase_rows_are_bounded():
    # baskets {A, C}, {A, C}, then {A, B}: row A is C 2, B 1; keeping one neighbour per row,
    # B is dropped from A's row again as soon as it enters (C 2 ranks first)
    records = [
        rec_(0, "x", A, "purchase", T0),
        rec_(1, "x", C, "purchase", T0),
        rec_(2, "y", A, "purchase", T0),
        rec_(3, "y", C, "purchase", T0),
        rec_(4, "z", A, "purchase", T2),
        rec_(5, "z", B, "purchase", T2),
        rec_(6, "w", A, "purchase", T2),
    ]
    only = dict(w_rep=0.0, w_sib=0.0, w_vis=0.0, w_pop=0.0, w_cf=1.0, k=2)
    full = expected_at(records, "w", EMB, PAYLOADS, cfg(**only))
    assert full.items == [(C, 1.0), (B, 0.5)]
    bounded = expected_at(records, "w", EMB, PAYLOADS, cfg(co_neighbours=1, **only))
    assert bounded.items == [(C, 1.0), (A, 0.0)]  # then A and B tie at 0: by id


def _published(user, event_id, items, strategy="hybrid", offset=None, reasons=None):
    reasons = reasons or ["x"] * len(items)
    return SimpleNamespace(
        user_id=user,
        event_id=event_id,
        strategy=strategy,
        trigger="event",
        items=[SimpleNamespace(item_id=i, score=s, reason=r) for (i, s), r in zip(items, reasons)],
        as_of_partition=None if offset is None else 0,
        as_of_offset=offset,
    )


def _as_published(exp, offset=None):
    reasons = [sorted(r)[0] for r in exp.reasons]
    return _published(exp.user_id, exp.event_id, exp.items, exp.strategy, offset, reasons)


def test_check_recommendations_as_of_a_batch():
    c = cfg()
    records = [*RECORDS, tick(4, T3)]
    # one batch of offsets 0..4: one recommendation per user, after their last event
    batch = [
        _as_published(expected_at(records, u, EMB, PAYLOADS, c), offset=4) for u in ("u1", "u2")
    ]
    assert check_recommendations(batch, records, EMB, PAYLOADS, c) == []
    # a worker without as-of fields: each recommendation as of its event's record
    per_event = [
        _as_published(e) for e in expected_recommendations(records, EMB, c, PAYLOADS).values()
    ]
    assert len(per_event) == 4
    assert check_recommendations(per_event, records, EMB, PAYLOADS, c) == []
    # u1's list as of offset 1 is not u1's list as of the batch end (popularity moved on)
    early = _as_published(expected_at(records[:2], "u1", EMB, PAYLOADS, c), offset=4)
    assert len(check_recommendations([early], records, EMB, PAYLOADS, c)) == 1
    # a swapped pair, a score off by 1e-5, a wrong reason, a stale event id: each found
    swapped, off, wrong_reason, stale = (
        _as_published(expected_at(records, "u2", EMB, PAYLOADS, c), offset=4) for _ in range(4)
    )
    swapped.items = [swapped.items[i] for i in (1, 0, 2)]
    off.items[2].score += 1e-5
    wrong_reason.items[0].reason = "trending"
    stale.event_id = "e2"
    for bad in (swapped, off, wrong_reason, stale):
        assert len(check_recommendations([bad], records, EMB, PAYLOADS, c)) == 1
    # within 1e-6 is equal, and so is an order swap of two items with equal scores
    near = _as_published(expected_at(records, "u2", EMB, PAYLOADS, c), offset=4)
    near.items[2].score += 5e-7
    assert check_recommendations([near], records, EMB, PAYLOADS, c) == []
    two = [rec_(0, "x", A, "purchase", T0), rec_(1, "y", B, "purchase", T0)]
    swap = _published("y", "e1", [(B, 1.0), (A, 1.0)], "trending", 1, ["trending"] * 2)
    assert check_recommendations([swap], two, EMB, PAYLOADS, cfg(personalise_after=9)) == []
    # an as-of offset past the partition's end is reported
    beyond = _as_published(expected_at(records, "u2", EMB, PAYLOADS, c), offset=9)
    assert "beyond" in check_recommendations([beyond], records, EMB, PAYLOADS, c)[0]


def test_tie_at_the_cut_may_trade_places_with_the_next_item():
    """The k-th item may be any item whose score ties the k-th score (float noise decides)."""
    want = Expected(
        "e",
        "u",
        "visual",
        [(A, 0.9), (B, 0.5)],
        (frozenset({"visual"}),) * 2,
        ties={C: (0.5 - 4e-7, frozenset({"visual"}))},
    )
    tied = _published("u", "e", [(A, 0.9), (C, 0.5)], "visual", reasons=["visual"] * 2)
    assert compare(tied, want) is None
    other = _published("u", "e", [(A, 0.9), ("D", 0.5)], "visual", reasons=["visual"] * 2)
    assert "item at 1" in compare(other, want)
    untied = Expected(*[getattr(want, f) for f in ("event_id", "user_id", "strategy", "items")])
    assert "item at 1" in compare(tied, untied)
