"""Turn user states into recommendation lists: the hybrid and the visual ranker (pure).

A :class:`RankContext` holds what every user of a partition shares at one moment (the trending
order, co-purchase counts, the catalogue mirror and the ranking settings); :func:`rank_states`
ranks many users against one context, which is how the users agent ranks a micro-batch, the day
close ranks a slice of users and the web API ranks one user.

The visual ranker needs nearest neighbours from the vector store; :func:`visual_queries` gives the
unit user vectors to search for, and the caller passes the hits back to :func:`rank_states`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streams.catalogue import Catalogue
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
from streams.userstate import UserState, excluded_items, user_vector

TRENDING_KEY = "*"  # user_id of the trending list (trending topic) for users not seen yet

# (unit user vector, limit, excluded ids) -> [(item_id, vector)] candidates, best first
CandidateSearch = Callable[
    [np.ndarray, int, frozenset[str]], Awaitable[Sequence[tuple[str, np.ndarray]]]
]
Candidates = Sequence[tuple[str, np.ndarray]]


@dataclass(frozen=True)
class RankConfig:
    """The ranking settings, read once from :class:`Settings`."""

    ranker: str
    k: int
    exclude: str
    personalise_after: int
    half_life_s: float
    weights: HybridWeights
    cf_seeds: int
    cf_per_seed: int
    cf_candidates: int
    pop_candidates: int

    @classmethod
    def from_settings(cls, s: Settings) -> RankConfig:
        return cls(
            ranker=s.ranker,
            k=s.top_k,
            exclude=s.exclude,
            personalise_after=s.personalise_after,
            half_life_s=s.half_life_days * 86_400.0,
            weights=HybridWeights.from_settings(s),
            cf_seeds=s.cf_seeds,
            cf_per_seed=s.cf_per_seed,
            cf_candidates=s.cf_candidates,
            pop_candidates=s.pop_candidates,
        )


class RankContext:
    """What the users of one partition share while a batch (or a slice of users) is ranked.

    Built after the batch is folded; the trending head and maximum are read once here.
    """

    def __init__(
        self,
        config: RankConfig,
        *,
        trending: Trending,
        copurchase: CoPurchase,
        catalogue: Catalogue,
    ) -> None:
        self.config = config
        self.trending = trending
        self.copurchase = copurchase
        self.catalogue = catalogue
        self.head = trending.top(config.pop_candidates)
        self.head_ids = [i for i, _ in self.head]
        self.pop_max = trending.max_score
        self._popular = top_trending(trending, config.k)  # the fill list without exclusions

    def trending_list(self, exclude: Collection[str] = ()) -> list[Scored]:
        if not exclude:
            return list(self._popular)
        return top_trending(self.trending, self.config.k, exclude)


def personalised(state: UserState, vector: np.ndarray | None, config: RankConfig) -> bool:
    """Whether the user gets a personal list (else the trending list)."""
    if state.n_events < config.personalise_after:
        return False
    if config.ranker == "hybrid":
        return any(st.bought_ts is not None for st in state.items.values()) or vector is not None
    return vector is not None and float(np.linalg.norm(vector)) > 0


def visual_queries(
    states: Mapping[str, UserState], ctx: RankContext
) -> dict[str, tuple[np.ndarray, frozenset[str]]]:
    """For the visual ranker: user -> (unit float32 vector, excluded ids) to search the store."""
    out = {}
    for user_id, state in states.items():
        vec = user_vector(state, ctx.catalogue)
        if personalised(state, vec, ctx.config):
            unit = (vec / np.linalg.norm(vec)).astype(np.float32)
            out[user_id] = (unit, excluded_items(state, ctx.config.exclude))
    return out


def rank_states(
    states: Mapping[str, UserState],
    ctx: RankContext,
    candidates: Mapping[str, Candidates] | None = None,
) -> dict[str, tuple[list[Scored], str]]:
    """Each user's top-k and the strategy used ("hybrid", "visual" or "trending").

    ``candidates`` (visual ranker only): the store's nearest neighbours per user, for the users
    :func:`visual_queries` returned.
    """
    return {u: rank_state(s, ctx, (candidates or {}).get(u)) for u, s in states.items()}


def rank_state(
    state: UserState, ctx: RankContext, candidates: Candidates | None = None
) -> tuple[list[Scored], str]:
    cfg = ctx.config
    exclude = excluded_items(state, cfg.exclude)
    vec = user_vector(state, ctx.catalogue)
    if not personalised(state, vec, cfg):
        return ctx.trending_list(exclude), "trending"
    if cfg.ranker == "hybrid":
        ranked, strategy = hybrid_list(state, vec, ctx, exclude), "hybrid"
    else:
        ranked = rank_by_similarity(vec, candidates or [], cfg.k, exclude)
        strategy = "visual"
    if len(ranked) < cfg.k:  # small catalogue or few candidates: fill with trending items
        ranked = fill(ranked, ctx.trending_list(exclude), cfg.k)
    return ranked, strategy


def hybrid_list(
    state: UserState, vec: np.ndarray | None, ctx: RankContext, exclude: frozenset[str]
) -> list[Scored]:
    """Repurchase + siblings + co-purchase + visual re-ranking + popularity (see ranking.hybrid).

    Candidates: the user's purchases, their siblings, their co-purchase neighbours and the
    trending head, each read from the shared context.
    """
    cfg, w, cat = ctx.config, ctx.config.weights, ctx.catalogue
    bought = state.last_purchase
    now = state.last_ts
    seeds = sorted(bought.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.cf_seeds]
    seed_w = {i: 2.0 ** ((t - now) / cfg.half_life_s) for i, t in seeds}
    cf = ctx.copurchase.scores(seed_w, cfg.cf_per_seed)
    if len(cf) > cfg.cf_candidates:
        cf = dict(sorted(cf.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.cf_candidates])
    rep = price_weighted(state.rep, cat.price_of, w.price_exponent)
    sib = sibling_scores(rep, cat.code_of, cat.members)
    score = ctx.trending.score
    pop = {j: score(j) for j in {*rep, *sib, *cf, *ctx.head_ids}}
    sib = boost_by_popularity(sib, pop, ctx.pop_max, w.sib_pop)
    vis: dict[str, float] = {}
    if w.vis and vec is not None:
        ids = sorted(pop.keys() - exclude)
        vis = dict(zip(ids, _cosines(vec, ids, cat).tolist()))
    return hybrid_rank(
        candidates=pop.keys(),
        rep=rep,
        sib=sib,
        cf=cf,
        vis=vis,
        pop=pop,
        weights=w,
        k=cfg.k,
        exclude=exclude,
    )


def _cosines(vec: np.ndarray, ids: Sequence[str], cat: Catalogue) -> np.ndarray:
    """Cosine of the user vector with each item's vector (0 for items without one)."""
    out = np.zeros(len(ids))
    norm = float(np.linalg.norm(vec))
    if norm == 0:
        return out
    index = cat.index_of
    rows = np.fromiter((-1 if (r := index(j)) is None else r for j in ids), np.intp, len(ids))
    have = rows >= 0
    if have.any():
        idx = rows[have]
        unit = (vec / norm).astype(np.float32)
        out[have] = (cat.rows(idx) @ unit).astype(np.float64) / np.maximum(cat.norms(idx), 1e-12)
    return out


def to_record(
    user_id: str,
    ranked: Sequence[Scored],
    strategy: str,
    *,
    model_id: str,
    event_id: str | None,
    event_ts: float | None,
    trigger: str = "event",
    as_of: tuple[int, int] | None = None,
) -> Recommendation:
    return Recommendation(
        trigger=trigger,
        user_id=user_id,
        items=[RecItem(item_id=s.item_id, score=s.score, reason=s.reason) for s in ranked],
        model_id=model_id,
        event_id=event_id,
        event_ts=event_ts,
        strategy=strategy,
        as_of_partition=None if as_of is None else as_of[0],
        as_of_offset=None if as_of is None else as_of[1],
    )


async def rank_one(
    state: UserState, ctx: RankContext, search: CandidateSearch
) -> tuple[list[Scored], str]:
    """One user's list now (the web API): the visual ranker's candidates come from ``search``."""
    candidates = None
    query = visual_queries({state.user_id: state}, ctx).get(state.user_id)
    if ctx.config.ranker != "hybrid" and query is not None:
        unit, exclude = query
        candidates = await search(unit, 2 * ctx.config.k, exclude)
    return rank_state(state, ctx, candidates)
