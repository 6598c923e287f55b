"""Turn user states into recommendation lists: the hybrid and the visual ranker (pure).

A :class:`RankContext` holds what every user of a partition shares at one moment (the trending
order, co-purchase counts, the catalogue mirror and the ranking settings); :func:`rank_states`
ranks many users against one context, which is how the users agent ranks a micro-batch, the day
close ranks a slice of users and the web API ranks one user.

The visual ranker needs nearest neighbours from the vector store; :func:`visual_queries` gives the
unit user vectors to search for, and the caller passes the hits back to :func:`rank_states`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from streams.catalogue import Catalogue
from streams.events import RecItem, Recommendation
from streams.experiment import Experiment, variant_settings
from streams.ranking import Reason, Scored, Trending, fill, rank_by_similarity, top_trending
from streams.ranking.copurchase import CoPurchase
from streams.ranking.hybrid import (
    HybridWeights,
    blend,
    boost_by_popularity,
    price_weighted,
    sibling_scores,
    top_by_score,
)
from streams.settings import Settings
from streams.userstate import (
    HistoryEntry,
    LastList,
    UserState,
    excluded_items,
    item_hash,
    user_vector,
)

MAX_LIST = 255  # items of the last list a user state keeps
ANCHORS = 20  # distinct recent items of a user a visual reason may point at
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
    variant: str = ""  # the experiment variant these settings are ("": no experiment)

    @classmethod
    def from_settings(cls, s: Settings, variant: str = "") -> RankConfig:
        return cls(
            variant=variant,
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


def variant_configs(settings: Settings, experiment: Experiment | None) -> dict[str, RankConfig]:
    """variant name -> its ranking settings ("" -> the settings, without an experiment)."""
    return {
        name: RankConfig.from_settings(vs, name)
        for name, vs in variant_settings(settings, experiment).items()
    }


class RankContext:
    """What the users of one partition share while a batch (or a slice of users) is ranked.

    Built after the batch is folded: the trending head, its popularity and its unit vectors are
    read once here, so each user's cosines with the head come from one matrix product for all
    users (:meth:`head_cosines`).
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
        head = trending.top(config.pop_candidates)
        self.head_ids = [i for i, _ in head]
        self.head_pos = {i: n for n, i in enumerate(self.head_ids)}
        self.head_pop = np.array([sc for _, sc in head], dtype=np.float64)
        self.pop_max = trending.max_score
        self._head_unit = _unit_rows(self.head_ids, catalogue)  # (H, dim) float32
        self._popular = top_trending(trending, config.k)  # the fill list without exclusions

    def trending_list(self, exclude: Collection[str] = ()) -> list[Scored]:
        if not exclude:
            return list(self._popular)
        return top_trending(self.trending, self.config.k, exclude)

    def head_cosines(self, vectors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """user -> cosine of their vector with each head item (0 for items without a vector)."""
        if not vectors or not self.head_ids:
            return {u: np.zeros(len(self.head_ids)) for u in vectors}
        users = list(vectors)
        mat = np.stack([vectors[u] for u in users]).astype(np.float64)
        unit = (mat / np.linalg.norm(mat, axis=1, keepdims=True)).astype(np.float32)
        cos = (unit @ self._head_unit.T).astype(np.float64)
        return dict(zip(users, cos))


class Ranking:
    """The rank contexts of one moment per experiment variant, and who is ranked with which.

    Without an experiment there is one context, named "" (records carry no variant).
    """

    def __init__(
        self, contexts: Mapping[str, RankContext], experiment: Experiment | None = None
    ) -> None:
        self.contexts = dict(contexts)
        self.experiment = experiment

    @classmethod
    def build(
        cls,
        configs: Mapping[str, RankConfig],
        experiment: Experiment | None,
        *,
        trending: Trending,
        copurchase: CoPurchase,
        catalogue: Catalogue,
    ) -> Ranking:
        contexts = {
            name: RankContext(cfg, trending=trending, copurchase=copurchase, catalogue=catalogue)
            for name, cfg in configs.items()
        }
        return cls(contexts, experiment)

    def own(self, user_id: str) -> str:
        """The variant whose list the user sees ("" without an experiment)."""
        return "" if self.experiment is None else self.experiment.assign(user_id)

    def groups(self, user_ids: Iterable[str]) -> list[tuple[RankContext, list[str]]]:
        """(context, users it ranks) per variant; in shadow mode every variant ranks all."""
        users = list(user_ids)
        if self.experiment is None:
            return [(ctx, users) for ctx in self.contexts.values()]
        return [
            (self.contexts[name], members)
            for name, members in self.experiment.split(users).items()
            if members
        ]


def remember_lists(
    states: Mapping[str, UserState], records: Iterable[Recommendation], ranking: Ranking
) -> set[str]:
    """Keep in each user's state the list of their own variant just published (online metrics
    score their next event against it); returns the users whose state changed."""
    changed = set()
    for rec in records:
        state = states.get(rec.user_id)
        if state is None or (rec.variant or "") != ranking.own(rec.user_id):
            continue
        state.last_list = LastList(
            variant=rec.variant or "",
            trigger=rec.trigger,
            strategy=rec.strategy,
            items=tuple(item_hash(i.item_id) for i in rec.items[:MAX_LIST]),
        )
        changed.add(rec.user_id)
    return changed


def _unit_rows(ids: Sequence[str], cat: Catalogue) -> np.ndarray:
    """Unit float32 vectors of ``ids`` (zero rows for items without a vector)."""
    rows = cat.rows_of(ids)
    have = rows >= 0
    if have.all():
        return cat.rows(rows) / cat.norms(rows)[:, None].astype(np.float32)
    out = np.zeros((len(ids), cat.dim), dtype=np.float32)
    if have.any():
        idx = rows[have]
        out[have] = cat.rows(idx) / cat.norms(idx)[:, None].astype(np.float32)
    return out


def personalised(state: UserState, vector: np.ndarray | None, config: RankConfig) -> bool:
    """Whether the user gets a personal list (else the trending list)."""
    if state.n_events < config.personalise_after:
        return False
    if config.ranker == "hybrid":
        return any(st.bought_ts is not None for st in state.items.values()) or vector is not None
    return vector is not None and float(np.linalg.norm(vector)) > 0


def _vectors(states: Mapping[str, UserState], ctx: RankContext) -> dict[str, np.ndarray]:
    """The users' vectors, for those who have one with a non-zero norm."""
    out = {}
    for user_id, state in states.items():
        vec = user_vector(state, ctx.catalogue)
        if vec is not None and np.linalg.norm(vec) > 0:
            out[user_id] = vec
    return out


def visual_queries(
    states: Mapping[str, UserState], ctx: RankContext
) -> dict[str, tuple[np.ndarray, frozenset[str]]]:
    """For the visual ranker: user -> (unit float32 vector, excluded ids) to search the store."""
    out = {}
    for user_id, vec in _vectors(states, ctx).items():
        state = states[user_id]
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
    cfg = ctx.config
    vectors = _vectors(states, ctx)
    head_cos = ctx.head_cosines(vectors) if cfg.ranker == "hybrid" and cfg.weights.vis else {}
    out = {}
    for user_id, state in states.items():
        vec = vectors.get(user_id)
        exclude = excluded_items(state, cfg.exclude)
        if not personalised(state, vec, cfg):
            out[user_id] = ctx.trending_list(exclude), "trending"
            continue
        if cfg.ranker == "hybrid":
            ranked = hybrid_list(state, vec, ctx, exclude, head_cos.get(user_id))
            strategy = "hybrid"
        else:
            found = (candidates or {}).get(user_id) or []
            ranked = visual_causes(rank_by_similarity(vec, found, cfg.k, exclude), state, ctx)
            strategy = "visual"
        if len(ranked) < cfg.k:  # small catalogue or few candidates: fill with trending items
            ranked = fill(ranked, ctx.trending_list(exclude), cfg.k)
        out[user_id] = ranked, strategy
    return out


def hybrid_list(
    state: UserState,
    vec: np.ndarray | None,
    ctx: RankContext,
    exclude: frozenset[str],
    head_cos: np.ndarray | None = None,
) -> list[Scored]:
    """Repurchase + siblings + co-purchase + visual re-ranking + popularity (see ranking.hybrid).

    Candidates: the trending head (shared: its popularity and cosines come from the context)
    followed by the user's own items -- purchases, their siblings, their co-purchase neighbours.
    """
    cfg, w, cat = ctx.config, ctx.config.weights, ctx.catalogue
    bought = state.last_purchase
    now = state.last_ts
    seeds = sorted(bought.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.cf_seeds]
    seed_w = {i: 2.0 ** ((t - now) / cfg.half_life_s) for i, t in seeds}
    cf_ids, cf_vals = ctx.copurchase.score_arrays(seed_w, cfg.cf_per_seed)
    if len(cf_ids) > cfg.cf_candidates:
        kept = top_by_score(cf_ids, cf_vals, cfg.cf_candidates)
        cf_ids, cf_vals = [cf_ids[j] for j in kept], cf_vals[kept]
    rep = price_weighted(state.rep, cat.price_of, w.price_exponent)
    sib = sibling_scores(rep, cat.code_of, cat.members)
    score = ctx.trending.score
    sib = boost_by_popularity(sib, {j: score(j) for j in sib}, ctx.pop_max, w.sib_pop)
    head_pos, n_head = ctx.head_pos, len(ctx.head_ids)
    extra = [j for j in dict.fromkeys([*rep, *sib, *cf_ids]) if j not in head_pos]
    ids = ctx.head_ids + extra
    pos = dict(head_pos)
    pos.update((j, n_head + e) for e, j in enumerate(extra))

    def column(keys: Iterable[str], values: Iterable[float]) -> np.ndarray:
        out = np.zeros(len(ids))
        out[[pos[j] for j in keys]] = list(values)
        return out

    pop = np.concatenate([ctx.head_pop, ctx.trending.scores(extra)])
    if w.vis and vec is not None:
        head = head_cos if head_cos is not None else np.zeros(n_head)
        vis = np.concatenate([head, _cosines(vec, extra, cat)])
    else:
        vis = np.zeros(len(ids))
    keep = None
    if exclude:
        keep = np.fromiter((j not in exclude for j in ids), dtype=bool, count=len(ids))
    ranked = blend(
        ids,
        rep=column(rep, rep.values()),
        sib=column(sib, sib.values()),
        cf=column(cf_ids, cf_vals),
        vis=vis,
        pop=pop,
        weights=w,
        k=cfg.k,
        keep=keep,
    )
    return hybrid_causes(ranked, state, ctx, rep=rep, seed_w=seed_w)


def hybrid_causes(
    ranked: Sequence[Scored],
    state: UserState,
    ctx: RankContext,
    *,
    rep: Mapping[str, float],
    seed_w: Mapping[str, float],
) -> list[Scored]:
    """``ranked`` with the user's item behind each reason (``because``).

    A repurchase points at the item itself; a sibling at the bought item of the same product
    with the largest (price-weighted) purchase weight; a co-purchase at the seed that added most
    to its score (seed weight times the pair's count); a visual item at the most similar of the
    user's recent items (:func:`visual_causes`); trending items at nothing. Ties go to the
    smaller item id.
    """
    code_of, co = ctx.catalogue.code_of, ctx.copurchase
    out = []
    for s in ranked:
        because = None
        if s.reason is Reason.REPURCHASE:
            because = s.item_id
        elif s.reason is Reason.SIBLING:
            code = code_of.get(s.item_id)
            same = [(-w, i) for i, w in rep.items() if i != s.item_id and code_of.get(i) == code]
            because = min(same)[1] if same else None
        elif s.reason is Reason.COPURCHASE:
            pairs = [(-w * co.count(i, s.item_id), i) for i, w in seed_w.items()]
            pairs = [p for p in pairs if p[0] < 0]
            because = min(pairs)[1] if pairs else None
        out.append(s if because is None else replace(s, because=because))
    return visual_causes(out, state, ctx)


def anchors_of(history: Sequence[HistoryEntry], limit: int = ANCHORS) -> list[tuple[str, bool]]:
    """The distinct items of a history, newest first, as (item id, bought): what a visual
    reason may point at."""
    bought = {h.item_id for h in history if h.kind == "purchase"}
    out: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for h in reversed(history):
        if h.item_id not in seen:
            seen.add(h.item_id)
            out.append((h.item_id, h.item_id in bought))
            if len(out) >= limit:
                break
    return out


def visual_causes(ranked: Sequence[Scored], state: UserState, ctx: RankContext) -> list[Scored]:
    """Visual items of ``ranked`` pointed at the most similar of the user's recent items (on
    a tie: a purchase, then the newer item); items without a vector point at nothing."""
    at = [n for n, s in enumerate(ranked) if s.reason is Reason.VISUAL and s.because is None]
    if not at:
        return list(ranked)
    anchors = anchors_of(state.history)
    if not anchors:
        return list(ranked)
    cat = ctx.catalogue
    anchor_unit = _unit_rows([a for a, _ in anchors], cat)
    item_unit = _unit_rows([ranked[n].item_id for n in at], cat)
    sims = item_unit @ anchor_unit.T  # (items, anchors)
    usable = np.linalg.norm(anchor_unit, axis=1) > 0
    out = list(ranked)
    for row, n in enumerate(at):
        if not np.any(item_unit[row]):
            continue
        keys = [
            (float(sims[row, a]), bought, -a) for a, (_, bought) in enumerate(anchors) if usable[a]
        ]
        if keys:
            best = max(keys)
            out[n] = replace(out[n], because=anchors[-best[2]][0])
    return out


def _cosines(vec: np.ndarray, ids: Sequence[str], cat: Catalogue) -> np.ndarray:
    """Cosine of the user vector with each item's vector (0 for items without one)."""
    if not ids:
        return np.zeros(0)
    unit = (vec / np.linalg.norm(vec)).astype(np.float32)
    rows = cat.rows_of(ids)
    have = rows >= 0
    if have.all():
        return (cat.rows(rows) @ unit).astype(np.float64) / cat.norms(rows)
    out = np.zeros(len(ids))
    if have.any():
        idx = rows[have]
        out[have] = (cat.rows(idx) @ unit).astype(np.float64) / cat.norms(idx)
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
    variant: str = "",
) -> Recommendation:
    return Recommendation(
        variant=variant or None,
        trigger=trigger,
        user_id=user_id,
        items=[
            RecItem(item_id=s.item_id, score=s.score, reason=s.reason, because=s.because)
            for s in ranked
        ],
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
    users = {state.user_id: state}
    candidates: dict[str, Candidates] = {}
    if ctx.config.ranker != "hybrid":
        for user_id, (unit, exclude) in visual_queries(users, ctx).items():
            candidates[user_id] = await search(unit, 2 * ctx.config.k, exclude)
    return rank_states(users, ctx, candidates)[state.user_id]
