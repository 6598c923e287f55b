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
from dataclasses import dataclass

import numpy as np

from streams.catalogue import Catalogue
from streams.events import Recommendation
from streams.experiment import Experiment, variant_settings
from streams.ranking import Reason, Scored, Trending, fill, rank_by_similarity, top_trending
from streams.ranking.copurchase import CoPurchase
from streams.ranking.hybrid import (
    HybridWeights,
    blend_parts,
    blend_parts_rows,
    boost_by_popularity,
    cosines_needed,
    price_weighted,
    sibling_scores,
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
    read once here, so each user's cosines with the head are one matrix-vector product
    (:meth:`head_cosines`).
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
        """user -> cosine of their vector with each head item (0 for items without a vector).

        One matrix-vector product per user, not one matrix product for the batch: BLAS sums a
        matrix product in an order that depends on its shape, so a user's cosines (and scores,
        in the last digits) would depend on who else is in the batch. A user's list must be the
        same whichever batch or day-close slice ranks it; this costs ~10 us per user.
        """
        if not vectors or not self.head_ids:
            return {u: np.zeros(len(self.head_ids)) for u in vectors}
        head = self._head_unit
        out = {}
        for user_id, vec in vectors.items():
            vec = np.asarray(vec, dtype=np.float64)
            unit = (vec / np.linalg.norm(vec)).astype(np.float32)
            out[user_id] = (head @ unit).astype(np.float64)
        return out


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
    out: dict[str, tuple[list[Scored], str]] = {}
    hybrid: dict[str, tuple[UserState, np.ndarray | None, frozenset[str]]] = {}
    for user_id, state in states.items():
        vec = vectors.get(user_id)
        exclude = excluded_items(state, cfg.exclude)
        if not personalised(state, vec, cfg):
            out[user_id] = ctx.trending_list(exclude), "trending"
        elif cfg.ranker == "hybrid":
            hybrid[user_id] = state, vec, exclude
            out[user_id] = [], "hybrid"  # ranked below, all together; keeps the users' order
        else:
            found = (candidates or {}).get(user_id) or []
            ranked = visual_causes(rank_by_similarity(vec, found, cfg.k, exclude), state, ctx)
            out[user_id] = _filled(ranked, ctx, exclude), "visual"
    if hybrid:
        head_cos = None
        if cfg.weights.vis:
            cos = ctx.head_cosines({u: v for u, (_, v, _) in hybrid.items() if v is not None})
            head_cos = np.zeros((len(hybrid), len(ctx.head_ids)))
            for n, user_id in enumerate(hybrid):
                if user_id in cos:
                    head_cos[n] = cos[user_id]
        for user_id, ranked in zip(hybrid, hybrid_lists(list(hybrid.values()), ctx, head_cos)):
            out[user_id] = _filled(ranked, ctx, hybrid[user_id][2]), "hybrid"
    return out


def _filled(ranked: list[Scored], ctx: RankContext, exclude: frozenset[str]) -> list[Scored]:
    """Short lists (small catalogue, few candidates) filled with trending items."""
    if len(ranked) < ctx.config.k:
        return fill(ranked, ctx.trending_list(exclude), ctx.config.k)
    return ranked


def hybrid_list(
    state: UserState,
    vec: np.ndarray | None,
    ctx: RankContext,
    exclude: frozenset[str],
    head_cos: np.ndarray | None = None,
) -> list[Scored]:
    """One user's hybrid list (:func:`hybrid_lists` for a single user)."""
    cos = None if head_cos is None else head_cos[None, :]
    return hybrid_lists([(state, vec, exclude)], ctx, cos)[0]


def hybrid_lists(
    users: Sequence[tuple[UserState, np.ndarray | None, frozenset[str]]],
    ctx: RankContext,
    head_cos: np.ndarray | None = None,
) -> list[list[Scored]]:
    """Repurchase + siblings + co-purchase + visual re-ranking + popularity (see ranking.hybrid)
    for many users at once: each user's (state, vector or None, excluded items) -> top-k.

    Candidates: the trending head (shared: its popularity and, in ``head_cos`` (users x head),
    the users' cosines with it) followed by each user's own items -- purchases, their siblings,
    their co-purchase neighbours. The users' candidates are the rows of one matrix (head columns
    first, then each user's own items, padded), so the blend, the scaling of each signal by its
    maximum over the user's candidates, the exclusions and the top-k are array operations over
    the whole batch; the order is :func:`~streams.ranking.hybrid.blend`'s (score desc, then item
    id; the reason is the largest contribution, ties to the later signal name).
    """
    cfg, w, cat = ctx.config, ctx.config.weights, ctx.catalogue
    head_pos, n_head = ctx.head_pos, len(ctx.head_ids)
    half_life = cfg.half_life_s
    extras: list[list[str]] = []
    cells: dict[str, tuple[list[int], list[int], list[float]]] = {
        name: ([], [], []) for name in ("rep", "sib", "cf")
    }
    excluded: tuple[list[int], list[int]] = ([], [])
    causes: list[tuple[dict[str, float], dict[str, float]]] = []  # (rep, seed weights) per user
    seed_weights = []
    for state, _, _ in users:
        now = state.last_ts
        seeds = sorted(state.last_purchase.items(), key=lambda kv: (-kv[1], kv[0]))
        seed_weights.append({i: 2.0 ** ((t - now) / half_life) for i, t in seeds[: cfg.cf_seeds]})
    cf_of = ctx.copurchase.score_arrays_of(seed_weights, cfg.cf_per_seed, limit=cfg.cf_candidates)
    for u, ((state, _, exclude), seed_w, (cf_ids, cf_vals)) in enumerate(
        zip(users, seed_weights, cf_of)
    ):
        rep = price_weighted(state.rep, cat.price_of, w.price_exponent)
        sib = sibling_scores(rep, cat.code_of, cat.members)
        sib = boost_by_popularity(sib, ctx.trending.score_map, ctx.pop_max, w.sib_pop)
        extra = [j for j in dict.fromkeys([*rep, *sib, *cf_ids]) if j not in head_pos]
        col_of = dict(head_pos)
        col_of.update(zip(extra, range(n_head, n_head + len(extra))))
        for name, keys, values in (
            ("rep", rep, rep.values()),
            ("sib", sib, sib.values()),
            ("cf", cf_ids, cf_vals.tolist()),
        ):
            rows, cols, vals = cells[name]
            cols.extend(map(col_of.__getitem__, keys))
            rows.extend([u] * (len(cols) - len(rows)))
            vals.extend(values)
        for j in exclude:
            col = col_of.get(j)
            if col is not None:
                excluded[0].append(u)
                excluded[1].append(col)
        extras.append(extra)
        causes.append((rep, seed_w))

    n_users, width = len(users), n_head + max((len(e) for e in extras), default=0)
    if n_users == 0 or width == 0 or cfg.k <= 0:
        return [[] for _ in users]
    real = np.zeros((n_users, width), dtype=bool)  # a candidate (not padding)
    real[:, :n_head] = True
    pop = np.zeros((n_users, width))
    pop[:, :n_head] = ctx.head_pop
    vis = np.zeros((n_users, width))
    if head_cos is not None and w.vis:
        vis[:, :n_head] = head_cos
    flat_extra = [j for extra in extras for j in extra]
    if flat_extra:
        rows = np.repeat(np.arange(n_users), [len(e) for e in extras])
        cols = np.concatenate([np.arange(n_head, n_head + len(e)) for e in extras])
        real[rows, cols] = True
        pop[rows, cols] = ctx.trending.scores(flat_extra)
    raw = {}
    for name, (rows, cols, vals) in cells.items():
        raw[name] = np.zeros((n_users, width))
        if rows:
            raw[name][rows, cols] = vals
    keep = real
    if excluded[0]:
        keep[excluded[0], excluded[1]] = False
    parts = blend_parts(rep=raw["rep"], sib=raw["sib"], cf=raw["cf"], pop=pop, weights=w)
    if w.vis and flat_extra:
        _own_cosines(users, extras, ctx, parts=parts, vis=vis, keep=keep)
    out = blend_parts_rows(
        lambda u, col: ctx.head_ids[col] if col < n_head else extras[u][col - n_head],
        parts=parts,
        vis=vis,
        weights=w,
        k=cfg.k,
        keep=keep,
    )
    states = [state for state, _, _ in users]
    with_causes = [
        hybrid_causes(ranked, state, ctx, rep=rep, seed_w=seed_w)
        for ranked, state, (rep, seed_w) in zip(out, states, causes)
    ]
    return visual_causes_of(with_causes, states, ctx)


def _own_cosines(
    users: Sequence[tuple[UserState, np.ndarray | None, frozenset[str]]],
    extras: Sequence[Sequence[str]],
    ctx: RankContext,
    *,
    parts: Mapping[str, np.ndarray],
    vis: np.ndarray,
    keep: np.ndarray,
) -> None:
    """Fill ``vis`` (in place) with each user's cosines for their own candidates (the columns
    after the head), for those that can still reach the user's top-k
    (:func:`~streams.ranking.hybrid.cosines_needed`): reading an item's vector is most of a
    cosine's cost, and most own candidates (co-purchase neighbours) score too low to be listed
    whatever their similarity. The catalogue's sketch (:class:`~streams.catalogue.CosineSketch`)
    then narrows each cosine still needed to an interval, which rules out ~60 % more of them on
    the H&M catalogue (those get a value inside their interval). The lists are the same as with
    every cosine computed."""
    cat, n_head = ctx.catalogue, len(ctx.head_ids)
    n_users, width = vis.shape
    known = np.zeros((n_users, width), dtype=bool)
    known[:, :n_head] = True
    low = np.full((n_users, 1), -1.0)  # the lowest possible cosine per user
    for u, (_, vec, _) in enumerate(users):
        if vec is None:
            known[u] = True  # no vector: no visual part
        elif cat.nonnegative and vec.min() >= 0:
            low[u] = 0.0
    weights, k = ctx.config.weights, ctx.config.k
    needed = cosines_needed(
        parts=parts, vis=vis, vis_known=known, vis_low=low, weights=weights, k=k, keep=keep
    )
    users_at, cols = np.nonzero(needed[:, n_head:])
    if not len(users_at):
        return
    cols += n_head
    rows = cat.rows_of([extras[u][c - n_head] for u, c in zip(users_at.tolist(), cols.tolist())])
    asking = np.unique(users_at).tolist()  # users with a cosine still needed
    units = np.zeros((n_users, cat.dim), dtype=np.float32)
    for u in asking:
        vec = users[u][1]
        units[u] = vec / np.linalg.norm(vec)
    sketch, have = cat.sketch, rows >= 0
    if sketch is not None and have.any():
        # narrow the ranges of the cosines still needed, and ask again: ranges only shrink, so
        # the cosines ruled out above stay out
        user_coords = np.zeros((n_users, sketch.basis.shape[1]))
        user_rest = np.zeros(n_users)
        for u in asking:
            user_coords[u], user_rest[u] = sketch.project_one(units[u])
        at = users_at[have], cols[have]
        cell_low, cell_high = sketch.bounds(rows[have], user_coords[at[0]], user_rest[at[0]])
        vis_low = np.repeat(low, width, axis=1)
        vis_high = np.ones((n_users, width))
        vis_low[at] = np.maximum(vis_low[at], cell_low)
        vis_high[at] = np.minimum(1.0, cell_high)
        known[users_at[~have], cols[~have]] = True  # no vector: a cosine of 0 (vis holds it)
        narrowed = cosines_needed(
            parts=parts,
            vis=vis,
            vis_known=known,
            vis_low=vis_low,
            vis_high=vis_high,
            weights=weights,
            k=k,
            keep=keep,
        )
        vis[at] = vis_low[at]  # a value in range for those still not needed
        pick = narrowed[users_at, cols]
        users_at, cols, rows = users_at[pick], cols[pick], rows[pick]
    vis[users_at, cols] = pair_cosines(units, users_at, rows, cat)


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
    to its score (seed weight times the pair's count); trending items at nothing. Visual items
    are left to :func:`visual_causes_of` (one product for a whole batch). Ties go to the
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
        out.append(s if because is None else Scored(s.item_id, s.score, s.reason, because))
    return out


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
    """One user's :func:`visual_causes_of`."""
    return visual_causes_of([ranked], [state], ctx)[0]


def visual_causes_of(
    lists: Sequence[Sequence[Scored]], states: Sequence[UserState], ctx: RankContext
) -> list[list[Scored]]:
    """Visual items of each user's list pointed at the most similar of that user's recent
    items (:func:`anchors_of`; on a tie: a purchase, then the newer item); items without a
    vector point at nothing. The vectors of all users' items and anchors are read once; each
    (item, anchor) similarity is one fixed-order sum (:func:`row_dots`), so it does not depend
    on who else is in the batch (a BLAS product's sums depend on its shape)."""
    out = [list(ranked) for ranked in lists]
    todo = []  # (user, positions of visual items without a cause, anchors)
    for u, (ranked, state) in enumerate(zip(lists, states)):
        at = [n for n, s in enumerate(ranked) if s.reason is Reason.VISUAL and s.because is None]
        anchors = anchors_of(state.history) if at else []
        if anchors:
            todo.append((u, at, anchors))
    if not todo:
        return out
    slot: dict[str, int] = {}  # item id -> its row in ``unit``
    n_items = max(len(at) for _, at, _ in todo)
    n_anchors = max(len(anchors) for _, _, anchors in todo)
    item_slots = np.full((len(todo), n_items), -1, dtype=np.intp)  # -1: padding
    anchor_slots = np.full((len(todo), n_anchors), -1, dtype=np.intp)
    for t, (u, at, anchors) in enumerate(todo):
        item_slots[t, : len(at)] = [slot.setdefault(lists[u][n].item_id, len(slot)) for n in at]
        anchor_slots[t, : len(anchors)] = [slot.setdefault(i, len(slot)) for i, _ in anchors]
    unit = _unit_rows(list(slot), ctx.catalogue)
    usable = np.append(unit.any(axis=1), False)  # [-1]: padding is not usable
    # the pairs of usable items and anchors, in (entry, item, anchor) order
    pairs = usable[item_slots][:, :, None] & usable[anchor_slots][:, None, :]
    rows_i = np.broadcast_to(item_slots[:, :, None], pairs.shape)[pairs]
    rows_a = np.broadcast_to(anchor_slots[:, None, :], pairs.shape)[pairs]
    sims = np.full(pairs.shape, -np.inf, dtype=np.float32)
    sims[pairs] = row_dots(unit, rows_i, unit, rows_a)
    best = sims.max(axis=2)
    ties = sims == best[..., None]
    first = ties.argmax(axis=2)  # the newest of the most similar anchors
    n_ties = ties.sum(axis=2)
    found = best > -np.inf  # false: no vector, or no anchor with one
    for t, i in zip(*np.nonzero(found)):
        u, at, anchors = todo[t]
        pick = int(first[t, i])
        if n_ties[t, i] > 1:  # a purchase among the tied anchors wins, else the newest
            tied = np.flatnonzero(ties[t, i]).tolist()
            pick = next((a for a in tied if anchors[a][1]), tied[0])
        n = at[i]
        s = out[u][n]
        out[u][n] = Scored(s.item_id, s.score, s.reason, anchors[pick][0])
    return out


DOT_CHUNK = 1024  # rows per gather in row_dots: ~5 MB per operand at 1280 float32 dimensions


def row_dots(a: np.ndarray, rows_a: np.ndarray, b: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """``a[rows_a[n]] . b[rows_b[n]]`` for every n: one fixed-order sum per pair (``einsum``),
    whatever the other pairs, gathered ``DOT_CHUNK`` rows at a time (a batch's pairs gathered at
    once were two 40-90 MB temporaries, and their fresh pages cost more than the sums)."""
    out = np.empty(len(rows_a), dtype=np.result_type(a, b))
    for start in range(0, len(rows_a), DOT_CHUNK):
        end = start + DOT_CHUNK
        out[start:end] = np.einsum("ij,ij->i", a[rows_a[start:end]], b[rows_b[start:end]])
    return out


def pair_cosines(
    units: np.ndarray, user_at: np.ndarray, rows: np.ndarray, cat: Catalogue
) -> np.ndarray:
    """Cosine of ``units[user_at[n]]`` (unit float32 user vectors) with catalogue row
    ``rows[n]``'s vector, for every n (0 for a row of -1: no vector): many users' candidates in
    one pass.

    Each cosine is a function of the item and the user vector alone: the dot products are one
    fixed-order sum per pair (:func:`row_dots`), not a BLAS product, whose sums depend on which
    other rows, in which order, it is given. The ids come in set order, which differs between
    processes, and with other users' candidates around them, so with BLAS a restarted worker
    (or another batch) could score the same user differently in the last digits.
    """
    if not len(rows):
        return np.zeros(0)
    have = rows >= 0
    if have.all():
        dots = row_dots(cat.matrix, rows, units, user_at)
        return dots.astype(np.float64) / cat.norms(rows)
    out = np.zeros(len(rows))
    if have.any():
        idx = rows[have]
        dots = row_dots(cat.matrix, idx, units, user_at[have])
        out[have] = dots.astype(np.float64) / cat.norms(idx)
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
    return Recommendation.model_validate(  # one validation of the nested dicts (hot path)
        {
            "variant": variant or None,
            "trigger": trigger,
            "user_id": user_id,
            "items": [
                {"item_id": s.item_id, "score": s.score, "reason": s.reason, "because": s.because}
                for s in ranked
            ],
            "model_id": model_id,
            "event_id": event_id,
            "event_ts": event_ts,
            "strategy": strategy,
            "as_of_partition": None if as_of is None else as_of[0],
            "as_of_offset": None if as_of is None else as_of[1],
        }
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
