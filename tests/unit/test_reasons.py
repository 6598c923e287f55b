"""Reasons: one typed reason per listed item and the user's item behind it (``because``)."""

from __future__ import annotations

import numpy as np
import pytest

from streams.catalogue import Catalogue
from streams.events import RecItem, Recommendation
from streams.ranking import Reason, Scored, Trending
from streams.ranking.copurchase import CoPurchase
from streams.recommend import (
    RankConfig,
    RankContext,
    anchors_of,
    hybrid_causes,
    rank_states,
    to_record,
    visual_causes,
    visual_causes_of,
)
from streams.settings import Settings
from streams.userstate import DecayConfig, UserState
from streams.web.service import explain


def _cat() -> Catalogue:
    cat = Catalogue()
    vecs = {
        "a1": [1.0, 0.0, 0.0],  # product A, colour 1
        "a2": [0.9, 0.1, 0.0],  # product A, colour 2
        "b": [0.0, 1.0, 0.0],
        "c": [0.0, 0.0, 1.0],
        "d": [0.1, 0.0, 0.99],  # looks like c
        "e": [0.0, 0.99, 0.1],  # looks like b
        "novec": None,
    }
    codes = {"a1": "A", "a2": "A", "b": "B", "c": "C", "d": "D", "e": "E", "novec": "N"}
    for item, v in vecs.items():
        cat.put(item, None if v is None else np.array(v, np.float32), {"product_code": codes[item]})
    return cat


def _ctx(settings: Settings, copurchase: CoPurchase | None = None) -> RankContext:
    t = Trending(window_s=86_400.0, bucket_s=3600, kind_weights={"view": 1.0, "purchase": 1.0})
    return RankContext(
        RankConfig.from_settings(settings),
        trending=t,
        copurchase=copurchase or CoPurchase(),
        catalogue=_cat(),
    )


def _state(events) -> UserState:
    cfg = DecayConfig.from_settings(Settings())
    s = UserState("u")
    for n, (item, kind) in enumerate(events):
        s.fold(item_id=item, kind=kind, ts=float(n), config=cfg)
    return s


def test_reason_values_are_the_wire_strings_and_round_trip():
    assert [r.value for r in Reason] == [
        "repurchase",
        "sibling",
        "copurchase",
        "visual",
        "trending",
    ]
    assert Reason.SIBLING == "sibling" and str(Reason.VISUAL) == "visual"
    assert Reason.TRENDING.text == "trending now"
    rec = Recommendation(
        user_id="u",
        items=[RecItem(item_id="x", score=1.0, reason=Reason.SIBLING, because="y")],
        model_id="m",
    )
    back = Recommendation.from_bytes(rec.to_bytes())
    assert back.items[0].reason is Reason.SIBLING and back.items[0].because == "y"
    with pytest.raises(ValueError):
        Recommendation.from_bytes(rec.to_bytes().replace(b'"sibling"', b'"whatever"'))


def test_each_reason_points_at_the_users_item_behind_it():
    co = CoPurchase()
    co.add_basket_item("c", ["b"])  # c was bought with b
    co.add_basket_item("c", ["a1"])
    co.add_basket_item("c", ["a1"])  # ... and twice with a1
    state = _state([("b", "purchase"), ("a1", "purchase"), ("d", "view")])
    ctx = _ctx(Settings(ranker="hybrid"), co)
    rep = {"a1": 1.0, "b": 2.0}
    seed_w = {"a1": 1.0, "b": 1.0}
    ranked = [
        Scored("b", 3.0, Reason.REPURCHASE),
        Scored("a2", 2.5, Reason.SIBLING),
        Scored("c", 2.0, Reason.COPURCHASE),
        Scored("e", 1.5, Reason.VISUAL),
        Scored("z", 1.0, Reason.TRENDING),
        Scored("novec", 0.5, Reason.VISUAL),
    ]
    caused = visual_causes(hybrid_causes(ranked, state, ctx, rep=rep, seed_w=seed_w), state, ctx)
    got = {s.item_id: s.because for s in caused}
    assert got == {
        "b": "b",  # bought before: the item itself
        "a2": "a1",  # the bought colour of the same product
        "c": "a1",  # the seed that added most (1.0 * 2 > 1.0 * 1)
        "e": "b",  # the most similar recent item
        "z": None,
        "novec": None,  # no vector, nothing to compare
    }
    # a heavier seed wins the co-purchase cause
    got = hybrid_causes(ranked, state, ctx, rep=rep, seed_w={"a1": 1.0, "b": 3.0})
    assert got[2].because == "b"


def test_visual_cause_prefers_the_most_similar_then_a_purchase_then_the_newer():
    state = _state([("a1", "view"), ("a2", "purchase"), ("c", "view"), ("c", "view")])
    assert anchors_of(state.history) == [("c", False), ("a2", True), ("a1", False)]
    ctx = _ctx(Settings(ranker="visual"))
    got = visual_causes(
        [Scored("d", 1.0, Reason.VISUAL), Scored("a1", 0.9, Reason.VISUAL)], state, ctx
    )
    assert [s.because for s in got] == ["c", "a1"]
    # equal similarity: the purchase wins over the view
    same = _state([("b", "view"), ("b", "purchase")])
    assert visual_causes([Scored("e", 1.0, Reason.VISUAL)], same, ctx)[0].because == "b"
    # no history: nothing to point at
    assert visual_causes([Scored("e", 1.0, Reason.VISUAL)], UserState("v"), ctx)[0].because is None


def test_published_records_carry_the_reason_and_its_cause():
    settings = Settings(ranker="hybrid", personalise_after=1, top_k=4, w_sibling=1.0)
    state = _state([("a1", "purchase"), ("c", "view")])
    ctx = _ctx(settings)
    ranked, strategy = rank_states({"u": state}, ctx)["u"]
    assert strategy == "hybrid"
    rec = to_record("u", ranked, strategy, model_id="m", event_id="e", event_ts=1.0)
    back = Recommendation.from_bytes(rec.to_bytes())
    for item in back.items:
        assert isinstance(item.reason, Reason)
        if item.reason is Reason.SIBLING:
            assert item.because == "a1"
        if item.reason is Reason.VISUAL:
            assert item.because in {"a1", "c"}
    assert any(i.reason is Reason.SIBLING for i in back.items)


def test_web_text_names_the_cause():
    titles = {"a1": "Dress", "b": "Shirt"}
    bought = {"a1"}
    assert (
        explain(Scored("a2", 1, Reason.SIBLING, "a1"), bought, titles)[0] == "same product as Dress"
    )
    text, because = explain(Scored("x", 1, Reason.VISUAL, "a1"), bought, titles)
    assert text == "because you bought Dress" and because == {
        "item_id": "a1",
        "title": "Dress",
        "kind": "purchase",
    }
    assert explain(Scored("x", 1, Reason.VISUAL, "b"), bought, titles)[0] == (
        "similar to Shirt you viewed"
    )
    assert explain(Scored("x", 1, Reason.COPURCHASE, "b"), bought, titles)[0] == (
        "bought together with Shirt"
    )
    assert explain(Scored("x", 1, Reason.REPURCHASE, "x"), bought, titles)[0] == "bought before"
    assert explain(Scored("x", 1, Reason.TRENDING), bought, titles) == ("trending now", None)
    assert explain(Scored("x", 1, Reason.VISUAL), bought, titles)[0] == (
        "visually similar to your taste"
    )


def test_batched_visual_causes_equal_one_user_at_a_time():
    ctx = _ctx(Settings(ranker="visual"))
    states = [
        _state([("a1", "view"), ("a2", "purchase"), ("c", "view")]),
        _state([("b", "view"), ("b", "purchase")]),
        UserState("nobody"),
        _state([("novec", "view"), ("d", "purchase"), ("e", "view"), ("b", "view")]),
    ]
    lists = [
        [Scored("d", 1.0, Reason.VISUAL), Scored("a1", 0.9, Reason.VISUAL)],
        [Scored("e", 1.0, Reason.VISUAL), Scored("z", 0.5, Reason.TRENDING)],
        [Scored("e", 1.0, Reason.VISUAL)],
        [Scored("c", 1.0, Reason.VISUAL), Scored("novec", 0.9, Reason.VISUAL)],
    ]
    batched = visual_causes_of(lists, states, ctx)
    assert batched == [visual_causes(r, st, ctx) for r, st in zip(lists, states)]
    assert [[s.because for s in r] for r in batched] == [
        ["c", "a1"],
        ["b", None],
        [None],
        ["d", None],
    ]
