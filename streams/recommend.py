"""Turn a user's state into a Recommendation: visual similarity, exclusion, trending fallback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from streams.events import RecItem, Recommendation
from streams.ranking import Scored, Trending, fill, rank_by_similarity, top_trending
from streams.settings import Settings
from streams.userstate import UserState, excluded_items

TRENDING_KEY = "*"  # user_id of the trending list (trending topic) for users not seen yet

# (unit user vector, limit, excluded ids) -> [(item_id, vector)] candidates, best first
CandidateSearch = Callable[
    [np.ndarray, int, frozenset[str]], Awaitable[Sequence[tuple[str, np.ndarray]]]
]


async def recommend(
    state: UserState,
    *,
    settings: Settings,
    trending: Trending,
    search: CandidateSearch,
) -> tuple[list[Scored], str]:
    """Top-k for a user and the strategy used ("visual" or "trending")."""
    k = settings.top_k
    exclude = excluded_items(state, settings.exclude)
    vec = state.vector
    norm = 0.0 if vec is None else float(np.linalg.norm(vec))
    if vec is None or norm == 0.0 or state.n_events < settings.personalise_after:
        return top_trending(trending, k, exclude), "trending"
    unit = (vec / norm).astype(np.float32)
    # Exact candidates from the store; the final scores and order come from the pure ranker.
    candidates = await search(unit, 2 * k, exclude)
    ranked = rank_by_similarity(vec, candidates, k, exclude)
    if len(ranked) < k:  # small catalogue: fill with trending items
        ranked = fill(ranked, top_trending(trending, k, exclude), k)
    return ranked, "visual"


def to_record(
    user_id: str,
    ranked: Sequence[Scored],
    strategy: str,
    *,
    model_id: str,
    event_id: str | None,
    event_ts: float | None,
) -> Recommendation:
    return Recommendation(
        user_id=user_id,
        items=[RecItem(item_id=s.item_id, score=s.score, reason=s.reason) for s in ranked],
        model_id=model_id,
        event_id=event_id,
        event_ts=event_ts,
        strategy=strategy,
    )
