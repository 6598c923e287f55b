"""Edge cases the unit tests found: non-finite timestamps, a zero user vector."""

import asyncio
import math

import numpy as np
import pytest
from pydantic import ValidationError

from streams.agents.ingest import parse_interaction
from streams.catalogue import Catalogue
from streams.events import Interaction
from streams.ranking import Trending
from streams.ranking.copurchase import CoPurchase
from streams.recommend import RankConfig, RankContext, rank_one, rank_states, visual_queries
from streams.settings import Settings
from streams.userstate import DecayConfig, UserState, user_vector

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1"}


@pytest.mark.parametrize("ts", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_non_finite_ts_rejected(ts):
    with pytest.raises(ValidationError):
        Interaction(**GOOD, ts=ts)


def test_non_finite_ts_rejected_at_ingest():
    with pytest.raises(ValueError):
        parse_interaction(b'{"event_id":"e","user_id":"u","item_id":"i","ts":NaN}', "view")


def _zero_vector_user(settings: Settings) -> tuple[UserState, Catalogue]:
    """Two purchases of opposite vectors: the user vector is exactly zero."""
    cfg = DecayConfig.from_settings(settings)
    cat = Catalogue()
    cat.put("a", np.array([1.0, 0.0]), {})
    cat.put("b", np.array([-1.0, 0.0]), {})
    st = UserState("u")
    st.fold(item_id="a", kind="purchase", ts=0.0, config=cfg)
    st.fold(item_id="b", kind="purchase", ts=0.0, config=cfg)
    vec = user_vector(st, cat)
    assert vec is not None and not vec.any()
    return st, cat


def _context(settings: Settings, cat: Catalogue) -> RankContext:
    t = Trending(86400, 3600, {"view": 1.0, "purchase": 1.0})
    t.add("x", "view", 0.0)
    return RankContext(
        RankConfig.from_settings(settings), trending=t, copurchase=CoPurchase(), catalogue=cat
    )


def test_zero_user_vector_does_not_search_with_nan():
    s = Settings(ranker="visual", top_k=2, personalise_after=1, exclude="none")
    st, cat = _zero_vector_user(s)
    calls = []

    async def search(unit, limit, exclude):
        calls.append(unit)
        return []

    ctx = _context(s, cat)
    assert visual_queries({"u": st}, ctx) == {}  # nothing to normalise, nothing to search
    ranked, strategy = asyncio.run(rank_one(st, ctx, search))
    assert all(np.all(np.isfinite(u)) for u in calls)
    assert calls == []
    assert strategy == "trending"
    assert [r.item_id for r in ranked] == ["x"]


def test_zero_user_vector_hybrid_scores_stay_finite():
    """The hybrid ranker re-ranks by cosine with the user vector: a zero vector gives cosine 0,
    not NaN."""
    s = Settings(ranker="hybrid", top_k=3, personalise_after=1, exclude="none", w_visual=0.5)
    st, cat = _zero_vector_user(s)
    ranked, strategy = rank_states({"u": st}, _context(s, cat))["u"]
    assert strategy == "hybrid"
    assert {r.item_id for r in ranked} == {"a", "b", "x"}
    assert all(math.isfinite(r.score) for r in ranked)


def test_zero_item_vector_gives_cosine_zero_in_the_hybrid_ranker():
    """An item whose catalogue vector is all zeros, in the trending head or among the user's own
    candidates: its visual part is 0, never NaN."""
    s = Settings(ranker="hybrid", top_k=3, personalise_after=1, exclude="none", w_visual=0.5)
    cfg = DecayConfig.from_settings(s)
    cat = Catalogue()
    cat.put("a", np.array([1.0, 0.0]), {})
    cat.put("b", np.array([0.6, 0.8]), {})
    cat.put("z", np.zeros(2), {})
    for head in (["z", "b"], ["b"]):
        t = Trending(86400, 3600, {"view": 1.0, "purchase": 1.0})
        for n, item in enumerate(head):
            t.add(item, "view", 0.0, count=5 - n)
        st = UserState("u")
        st.fold(item_id="a", kind="purchase", ts=0.0, config=cfg)
        st.fold(item_id="z", kind="purchase", ts=0.0, config=cfg)  # own candidate
        ctx = RankContext(
            RankConfig.from_settings(s), trending=t, copurchase=CoPurchase(), catalogue=cat
        )
        ranked, strategy = rank_states({"u": st}, ctx)["u"]
        assert strategy == "hybrid"
        assert {r.item_id for r in ranked} == {"a", "b", "z"}
        assert all(math.isfinite(r.score) for r in ranked)
