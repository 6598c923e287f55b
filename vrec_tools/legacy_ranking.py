"""The per-event hybrid ranker as it was before the streaming-core rewrite (git 9559c6c), kept
only so that ``vrec bench stream`` can time it side by side with the batched ranker.

Same rule as :mod:`streams.recommend`, computed the old way: the trending top-N by scanning every
item of the window (per call), co-purchase neighbours by a heap over the whole row, the blend in a
Python loop over the candidates and the visual cosines from a stack of per-item float64 vectors.
Not used by the worker.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Collection, Mapping

import numpy as np

from streams.catalogue import Catalogue
from streams.ranking import Scored, Trending
from streams.ranking.copurchase import CoPurchase
from streams.ranking.hybrid import (
    REASONS,
    SIGNALS,
    boost_by_popularity,
    price_weighted,
    sibling_scores,
    top_by_score,
)
from streams.ranking.reasons import Reason
from streams.recommend import RankConfig, RankContext, personalised
from streams.userstate import UserState, excluded_items, user_vector


def _score(trending: Trending, item_id: str) -> float:
    counts = trending.totals.get(item_id)
    if not counts:
        return 0.0
    return float(sum(trending.weights[k] * c for k, c in zip(trending.kinds, counts)))


def _top(trending: Trending, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
    scored = ((_score(trending, i), i) for i in trending.totals if i not in exclude)
    best = heapq.nsmallest(k, ((-s, i) for s, i in scored if s > 0))
    return [(i, -neg) for neg, i in best]


def _cf(co: CoPurchase, seeds: Mapping[str, float], per_seed: int) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for seed, w in seeds.items():
        row = co.counts.get(seed, {})
        for j, c in heapq.nsmallest(per_seed, row.items(), key=lambda kv: (-kv[1], kv[0])):
            out[j] += w * c
    return dict(out)


def legacy_hybrid(
    state: UserState,
    *,
    config: RankConfig,
    trending: Trending,
    copurchase: CoPurchase,
    catalogue: Catalogue,
) -> tuple[list[Scored], str]:
    """One user's list, computed as the pre-rewrite ``hybrid_recommend`` did."""
    cfg, weights = config, config.weights
    k = cfg.k
    exclude = excluded_items(state, cfg.exclude)
    vec = user_vector(state, catalogue)
    if state.n_events < cfg.personalise_after or not (state.rep or vec is not None):
        return [Scored(i, s, Reason.TRENDING) for i, s in _top(trending, k, exclude)], "trending"
    now = state.last_ts
    seeds = sorted(state.last_purchase.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.cf_seeds]
    cf = _cf(
        copurchase, {i: 2.0 ** ((t - now) / cfg.half_life_s) for i, t in seeds}, cfg.cf_per_seed
    )
    if len(cf) > cfg.cf_candidates:
        cf = dict(sorted(cf.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.cf_candidates])
    rep = price_weighted(state.rep, catalogue.price_of, weights.price_exponent)
    sib = sibling_scores(rep, catalogue.code_of, catalogue.members)
    head = _top(trending, cfg.pop_candidates)
    candidates = set(rep) | set(sib) | set(cf) | {i for i, _ in head}
    pop = {i: _score(trending, i) for i in candidates}
    pop_max = head[0][1] if head else max((sc for _, sc in _top(trending, 1)), default=0.0)
    sib = boost_by_popularity(sib, pop, pop_max, weights.sib_pop)
    vis: dict[str, float] = {}
    if weights.vis and vec is not None and np.linalg.norm(vec) > 0:
        known = sorted(i for i in candidates if i in catalogue)
        if known:
            mat = np.stack([catalogue.vector(i) for i in known]).astype(np.float64)
            sims = mat @ (vec / np.linalg.norm(vec)) / np.linalg.norm(mat, axis=1)
            vis = dict(zip(known, sims.tolist()))
    scaled = {}
    for name, signal in (("rep", rep), ("sib", sib), ("cf", cf)):
        top = max(signal.values(), default=0.0)
        scaled[name] = {i: v / top for i, v in signal.items()} if top > 0 else {}
    den = math.log1p(pop_max) if pop_max > 0 else 1.0
    scored = []
    for j in candidates:
        if j in exclude:
            continue
        parts = {
            "rep": weights.rep * scaled["rep"].get(j, 0.0),
            "sib": weights.sib * scaled["sib"].get(j, 0.0),
            "cf": weights.cf * scaled["cf"].get(j, 0.0),
            "vis": weights.vis * vis.get(j, 0.0),
            "pop": weights.pop * math.log1p(pop.get(j, 0.0)) / den,
        }
        reason = max(parts, key=lambda name: (parts[name], name))
        scored.append(Scored(j, sum(parts.values()), REASONS[reason]))
    scored.sort(key=lambda s: (-s.score, s.item_id))
    ranked = scored[:k]
    if len(ranked) < k:
        have = {s.item_id for s in ranked}
        filler = [Scored(i, s, Reason.TRENDING) for i, s in _top(trending, k, exclude)]
        ranked += [s for s in filler if s.item_id not in have][: k - len(ranked)]
    return ranked, "hybrid"


# -- the per-user ranker of the previous stop (git 31be2ef) -----------------------------------
def previous_rank_states(states: Mapping[str, UserState], ctx: RankContext) -> dict[str, list]:
    """Hybrid lists as ``streams.recommend.rank_states`` computed them at git 31be2ef: one user
    at a time (candidate columns, blend and top-k per user, no causes), for ``vrec bench
    stream``'s side-by-side timing of this stop's batched ranker. Lists only (the strategy and
    the trending fill are the same in both)."""
    cfg = ctx.config
    vectors = {}
    for user_id, state in states.items():
        vec = user_vector(state, ctx.catalogue)
        if vec is not None and np.linalg.norm(vec) > 0:
            vectors[user_id] = vec
    head_cos = ctx.head_cosines(vectors) if cfg.weights.vis else {}
    out = {}
    for user_id, state in states.items():
        vec = vectors.get(user_id)
        if not personalised(state, vec, cfg):
            continue
        exclude = excluded_items(state, cfg.exclude)
        out[user_id] = _previous_hybrid_list(state, vec, ctx, exclude, head_cos.get(user_id))
    return out


def _previous_hybrid_list(state, vec, ctx: RankContext, exclude, head_cos) -> list[Scored]:
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

    def column(keys, values) -> np.ndarray:
        out = np.zeros(len(ids))
        out[[pos[j] for j in keys]] = list(values)
        return out

    pop = np.concatenate([ctx.head_pop, ctx.trending.scores(extra)])
    if w.vis and vec is not None:
        head = head_cos if head_cos is not None else np.zeros(n_head)
        unit = (vec / np.linalg.norm(vec)).astype(np.float32)
        rows = cat.rows_of(extra)
        cos = np.zeros(len(extra))
        have = rows >= 0
        if have.any():
            idx = rows[have]
            cos[have] = (cat.rows(idx) @ unit).astype(np.float64) / cat.norms(idx)
        vis = np.concatenate([head, cos])
    else:
        vis = np.zeros(len(ids))
    keep = None
    if exclude:
        keep = np.fromiter((j not in exclude for j in ids), dtype=bool, count=len(ids))
    return _previous_blend(
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


def _previous_blend(ids, *, rep, sib, cf, vis, pop, weights, k, keep=None) -> list[Scored]:
    n = len(ids)
    if n == 0 or k <= 0:
        return []

    def scale(signal: np.ndarray) -> np.ndarray:
        top = float(signal.max())
        return signal / top if top > 0 else np.zeros(len(signal))

    pop_max = float(pop.max())
    parts = {
        "rep": weights.rep * scale(rep),
        "sib": weights.sib * scale(sib),
        "cf": weights.cf * scale(cf),
        "vis": weights.vis * vis,
        "pop": weights.pop * np.log1p(pop) / (math.log1p(pop_max) if pop_max > 0 else 1.0),
    }
    total = parts["rep"] + parts["sib"] + parts["cf"] + parts["vis"] + parts["pop"]
    if keep is not None:
        total = np.where(keep, total, -np.inf)
        m = min(k, int(keep.sum()))
    else:
        m = min(k, n)
    if m == 0:
        return []
    top = top_by_score(ids, total, m)
    by_signal = np.stack([parts[name][top] for name in SIGNALS])
    reason_at = len(SIGNALS) - 1 - np.argmax(by_signal[::-1], axis=0)
    return [
        Scored(ids[j], float(total[j]), REASONS[SIGNALS[r]])
        for j, r in zip(top, reason_at.tolist())
    ]
