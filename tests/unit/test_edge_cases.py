"""Edge cases the unit tests found: non-finite timestamps, a zero user vector."""

import asyncio

import numpy as np
import pytest
from pydantic import ValidationError

from streams.agents.ingest import parse_interaction
from streams.events import Interaction
from streams.ranking import Trending
from streams.recommend import recommend
from streams.settings import Settings
from streams.userstate import DecayConfig, UserState, fold_event

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1"}


@pytest.mark.parametrize("ts", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_non_finite_ts_rejected(ts):
    with pytest.raises(ValidationError):
        Interaction(**GOOD, ts=ts)


def test_non_finite_ts_rejected_at_ingest():
    with pytest.raises(ValueError):
        parse_interaction(b'{"event_id":"e","user_id":"u","item_id":"i","ts":NaN}', "view")


def test_zero_user_vector_does_not_search_with_nan():
    s = Settings(top_k=2, personalise_after=1, exclude="none")
    cfg = DecayConfig.from_settings(s)
    st = UserState("u")
    st = fold_event(
        st, item_id="a", kind="purchase", ts=0.0, vector=np.array([1.0, 0.0]), config=cfg
    )
    st = fold_event(
        st, item_id="b", kind="purchase", ts=0.0, vector=np.array([-1.0, 0.0]), config=cfg
    )
    assert st.vector is not None and not st.vector.any()
    calls = []

    async def search(unit, limit, exclude):
        calls.append(unit)
        return []

    t = Trending(86400, 3600, {"view": 1.0, "purchase": 1.0})
    t.add("x", "view", 0.0)
    ranked, strategy = asyncio.run(recommend(st, settings=s, trending=t, search=search))
    assert all(np.all(np.isfinite(u)) for u in calls)
    assert strategy == "trending"
