"""Turn a user's state into a Recommendation: visual similarity, exclusion, trending fallback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

import numpy as np

from streams.events import RecItem, Recommendation
from streams.ranking import Scored, Trending, fill, rank_by_similarity, top_trending
from streams.ranking.copurchase import CoPurchase
from streams.ranking.hybrid import (
    HybridWeights,
    boost_by_popularity,
    hybrid_rank,
    price_weighted,
    sibling_scores,
)
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
    trigger: str = "event",
) -> Recommendation:
    return Recommendation(
        trigger=trigger,
        user_id=user_id,
        items=[RecItem(item_id=s.item_id, score=s.score, reason=s.reason) for s in ranked],
        model_id=model_id,
        event_id=event_id,
        event_ts=event_ts,
        strategy=strategy,
    )


def hybrid_recommend(
    state: UserState,
    *,
    settings: Settings,
    trending: Trending,
    copurchase: CoPurchase,
    vectors: Mapping[str, np.ndarray],
    code_of: Mapping[str, str],
    members: Mapping[str, Collection[str]],
    price_of: Mapping[str, float] | None = None,
) -> tuple[list[Scored], str]:
    """Repurchase + siblings + co-purchase + visual re-ranking + popularity (see ranking.hybrid)."""
    s = settings
    weights = HybridWeights.from_settings(s)
    k = s.top_k
    exclude = excluded_items(state, s.exclude)
    if state.n_events < s.personalise_after or not (state.rep or state.vector is not None):
        return top_trending(trending, k, exclude), "trending"
    half_life = s.half_life_days * 86_400.0
    now = state.last_ts
    seeds = sorted(state.last_purchase.items(), key=lambda kv: (-kv[1], kv[0]))[: s.cf_seeds]
    seed_w = {i: 2.0 ** ((t - now) / half_life) for i, t in seeds}
    cf = copurchase.scores(seed_w, s.cf_per_seed)
    if len(cf) > s.cf_candidates:
        cf = dict(sorted(cf.items(), key=lambda kv: (-kv[1], kv[0]))[: s.cf_candidates])
    rep = price_weighted(state.rep, price_of or {}, weights.price_exponent)
    sib = sibling_scores(rep, code_of, members)
    head = trending.top(s.pop_candidates)
    candidates = set(state.rep) | set(sib) | set(cf) | {i for i, _ in head}
    pop = {i: trending.score(i) for i in candidates}
    # the head is sorted: its first score is the window's maximum (one scan, not two)
    pop_max = head[0][1] if head else max((sc for _, sc in trending.top(1)), default=0.0)
    sib = boost_by_popularity(sib, pop, pop_max, weights.sib_pop)
    vis: dict[str, float] = {}
    vec = state.vector
    if s.w_visual and vec is not None and np.linalg.norm(vec) > 0:
        known = sorted(i for i in candidates if i in vectors)
        if known:
            mat = np.stack([vectors[i] for i in known]).astype(np.float64)
            sims = mat @ (vec / np.linalg.norm(vec)) / np.linalg.norm(mat, axis=1)
            vis = dict(zip(known, sims.tolist()))
    ranked = hybrid_rank(
        candidates=candidates,
        rep=rep,
        sib=sib,
        cf=cf,
        vis=vis,
        pop=pop,
        weights=weights,
        k=k,
        exclude=exclude,
    )
    if len(ranked) < k:
        ranked = fill(ranked, top_trending(trending, k, exclude), k)
    return ranked, "hybrid"


async def rank_user(
    state: UserState,
    *,
    rt,  # streams.runtime.Runtime: settings and catalogue mirror
    trending: Trending,
    copurchase: CoPurchase,
    search: CandidateSearch,
) -> tuple[list[Scored], str]:
    """The configured ranker (settings.ranker) for one user: what the users agent publishes
    and what the web API shows."""
    if rt.settings.ranker == "hybrid":
        return hybrid_recommend(
            state,
            settings=rt.settings,
            trending=trending,
            copurchase=copurchase,
            vectors=rt.vectors,
            code_of=rt.code_of,
            members=rt.members,
            price_of=rt.price_of,
        )
    return await recommend(state, settings=rt.settings, trending=trending, search=search)
