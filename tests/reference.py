"""An independent reference for what the worker must publish, in plain numpy.

It does not import vrec's user-state, trending or ranking code: it recomputes each user's decayed
mean and repurchase weights from the full list of that user's events, trending by rescanning the
window, and co-purchase counts with plain dicts, so a bug in the incremental versions shows up as
a difference.

The unit of comparison is one published recommendation at its *as of* point: the user-events
partition ``p`` and offset ``o`` (``Recommendation.as_of_partition`` / ``as_of_offset``; for a
worker that does not publish them, the offset of the record of the recommendation's event). The
expected list is what the ranker gives with the partition's state after every record of ``p``
with an offset ``<= o`` (popularity, co-purchase) and the user's state after all their events up
to ``o``.

- :func:`expected_at`: one user's expected recommendation from a partition's records up to an
  offset, computed from scratch.
- :func:`check_recommendations`: every event-triggered recommendation against the expected one at
  its as-of point (one incremental pass per partition), as a list of mismatches.
- :func:`expected_recommendations`: the expected recommendation after each event (the worker
  with one event per batch), keyed by event id.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

REASON_NAMES = {
    "rep": "repurchase",
    "sib": "sibling",
    "cf": "copurchase",
    "vis": "visual",
    "pop": "trending",
}


@dataclass(frozen=True)
class Expected:
    event_id: str  # the user's last folded event at the as-of point
    user_id: str
    strategy: str
    items: list[tuple[str, float]]
    # per item, the reasons that are right: the largest contribution (and any other within
    # the comparison tolerance of it, whose order is float noise); empty: reasons not checked
    reasons: tuple[frozenset[str], ...] = ()
    # items just past the cut whose score ties the last one kept (within the comparison
    # tolerance), with their reasons: float noise may put one of them in the list instead
    ties: Mapping[str, tuple[float, frozenset[str]]] = field(default_factory=dict)


@dataclass
class RefConfig:
    half_life_s: float
    weights: dict[str, float]
    exclude: str
    k: int
    personalise_after: int
    window_s: float
    bucket_s: int
    distinct_buyers: bool = True
    channel_weights: dict[int, int] | None = None  # {sales channel: weight}; others weigh 1
    ranker: str = "visual"
    # hybrid ranker (streams/settings.py names in comments)
    w_rep: float = 1.0  # w_repurchase
    w_sib: float = 0.45  # w_sibling
    w_cf: float = 0.15  # w_copurchase
    w_vis: float = 0.5  # w_visual
    w_pop: float = 0.3  # w_popularity
    cf_seeds: int = 50
    cf_per_seed: int = 50
    cf_candidates: int = 200
    pop_candidates: int = 100
    price_exponent: float = 1.0  # rep_price_exponent
    sib_pop: float = 1.0  # sibling_pop_boost
    co_neighbours: int = 200  # copurchase_neighbours: entries kept per co-purchase row

    @classmethod
    def of(cls, s) -> RefConfig:  # s: streams.settings.Settings
        return cls(
            half_life_s=s.half_life_days * 86400.0,
            weights={"view": s.weight_view, "purchase": s.weight_purchase},
            exclude=s.exclude,
            k=s.top_k,
            personalise_after=s.personalise_after,
            window_s=s.trending_window_days * 86400.0,
            bucket_s=s.trending_bucket_s,
            distinct_buyers=s.trending_distinct_buyers,
            channel_weights=dict(s.trending_channel_weights),
            ranker=s.ranker,
            w_rep=s.w_repurchase,
            w_sib=s.w_sibling,
            w_cf=s.w_copurchase,
            w_vis=s.w_visual,
            w_pop=s.w_popularity,
            cf_seeds=s.cf_seeds,
            cf_per_seed=s.cf_per_seed,
            cf_candidates=s.cf_candidates,
            pop_candidates=s.pop_candidates,
            price_exponent=s.rep_price_exponent,
            sib_pop=s.sibling_pop_boost,
            # a worker without the bound keeps whole rows; the sample never reaches 200
            co_neighbours=getattr(s, "copurchase_neighbours", 200),
        )

    def count(self, event: dict) -> int:
        """What one counted event adds to its item's popularity (its channel's weight)."""
        channel = event.get("channel")
        return (self.channel_weights or {}).get(channel, 1) if channel else 1

    def decay(self, ts: float, ref: float) -> float:
        return 2.0 ** ((ts - ref) / self.half_life_s)


# ------------------------------------------------------------------ trending by rescanning


def _scores(counted: Sequence[tuple[str, str, float, int]], cfg: RefConfig) -> dict[str, float]:
    """(item, kind, ts, count) events -> {item: weight x count} over the window of buckets that
    ends at the newest bucket counted; items scoring 0 left out."""
    if not counted:
        return {}
    buckets = [int(ts // cfg.bucket_s) for _, _, ts, _ in counted]
    now = max(buckets)
    n = max(1, math.ceil(cfg.window_s / cfg.bucket_s))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (item, kind, _, count), b in zip(counted, buckets):
        if b > now - n:
            counts[item][kind] += count
    # weight x count per kind (not a running float sum): equal counts give equal scores
    score = {i: sum(cfg.weights[k] * c for k, c in sorted(kc.items())) for i, kc in counts.items()}
    return {i: s for i, s in score.items() if s > 0}


def _top(scores: Mapping[str, float], k: int, exclude=frozenset()) -> list[tuple[str, float]]:
    ranked = sorted(((i, s) for i, s in scores.items() if i not in exclude), key=_by_score)
    return ranked[:k]


def _by_score(x: tuple[str, float]):
    return (-x[1], x[0])


def _trending(
    events: list[tuple[str, str, float, int]], cfg: RefConfig, exclude: set[str]
) -> list[tuple[str, float]]:
    """(item, kind, ts, count) events -> the top k by weight x count within the window."""
    return _top(_scores(events, cfg), cfg.k, exclude)


def trending_list(events: list[dict], cfg: RefConfig, exclude=frozenset()):
    """The trending list after ``events`` (dicts in processing order), as the worker publishes
    it: a customer's repeat purchase of an item inside the window counts once."""
    counted, last = [], {}
    for e in events:
        if e.get("kind") == "tick":
            continue
        ev = (e["item_id"], e["kind"], float(e["ts"]), cfg.count(e))
        key = (e["user_id"], ev[0])
        if ev[1] == "purchase":
            prev = last.get(key)
            last[key] = ev[2] if prev is None else max(prev, ev[2])
            if cfg.distinct_buyers and prev is not None and ev[2] - prev < cfg.window_s:
                continue
        counted.append(ev)
    return _trending(counted, cfg, set(exclude))


# ------------------------------------------------------------------ one user, from scratch


def user_vector(user_events, embeddings: dict[str, np.ndarray], cfg: RefConfig):
    """The decayed weighted mean of a user's item vectors, recomputed from scratch.

    ``user_events``: (item, kind, ts) in any order."""
    t_max = max(ts for _, _, ts in user_events)
    num = np.zeros(len(next(iter(embeddings.values()))))
    den = 0.0
    for item, kind, ts in user_events:
        w = cfg.weights[kind] * cfg.decay(ts, t_max)
        num += w * embeddings[item].astype(np.float64)
        den += w
    return None if den <= 0 else num / den


def _excluded(hist: list[dict], policy: str) -> set[str]:
    if policy == "purchased":
        return {e["item_id"] for e in hist if e["kind"] == "purchase"}
    if policy == "seen":
        return {e["item_id"] for e in hist}
    if policy == "none":
        return set()
    raise ValueError(policy)


def _newest_purchases(hist: Iterable[dict]) -> dict[str, float]:
    """item -> the newest ts among the user's purchases of it."""
    out: dict[str, float] = {}
    for e in hist:
        if e["kind"] == "purchase":
            t = float(e["ts"])
            out[e["item_id"]] = max(t, out.get(e["item_id"], t))
    return out


@dataclass
class Catalogue:
    """What the ranker knows about items besides their vectors (item-embeddings payloads)."""

    code_of: dict[str, str]
    members: dict[str, set[str]]
    price_of: dict[str, float]

    @classmethod
    def of(cls, payloads: Mapping[str, Mapping] | None) -> Catalogue:
        code_of, members, price_of = {}, defaultdict(set), {}
        for item, p in (payloads or {}).items():
            if p.get("product_code"):
                code_of[item] = str(p["product_code"])
                members[str(p["product_code"])].add(item)
            if p.get("price") is not None:
                price_of[item] = float(p["price"])
        return cls(code_of, dict(members), price_of)


def _cosines(
    u: np.ndarray, items: Iterable[str], embeddings: Mapping[str, np.ndarray]
) -> dict[str, float]:
    out = {}
    nu = float(np.linalg.norm(u))
    for i in items:
        v = embeddings[i].astype(np.float64)
        out[i] = float(np.dot(v, u) / (np.linalg.norm(v) * nu))
    return out


def _hybrid(
    user: str,
    hist: list[dict],
    popularity: Mapping[str, float],
    co: Mapping[str, Mapping[str, int]],
    embeddings: Mapping[str, np.ndarray],
    cat: Catalogue,
    cfg: RefConfig,
    exclude: set[str],
    trending: list[tuple[str, float]],
) -> Expected | None:
    """The hybrid list (None: the user gets the trending strategy)."""
    eid = hist[-1]["event_id"]
    bought = _newest_purchases(hist)
    vec = user_vector([(e["item_id"], e["kind"], float(e["ts"])) for e in hist], embeddings, cfg)
    if len(hist) < cfg.personalise_after or not (bought or vec is not None):
        return None
    newest = max(float(e["ts"]) for e in hist)
    # repurchase: every purchase of the item, decayed; then weighed by the item's price relative
    # to the dearest of the user's priced purchases
    rep: dict[str, float] = defaultdict(float)
    for e in hist:
        if e["kind"] == "purchase":
            rep[e["item_id"]] += cfg.decay(float(e["ts"]), newest)
    priced = {i: cat.price_of[i] for i in rep if cat.price_of.get(i, 0.0) > 0}
    if cfg.price_exponent and priced:
        dearest = max(priced.values())
        for i in priced:
            rep[i] *= (priced[i] / dearest) ** cfg.price_exponent
    # siblings: the other items of a purchased item's product code
    sib: dict[str, float] = defaultdict(float)
    for i, w in rep.items():
        for j in cat.members.get(cat.code_of.get(i, ""), ()):
            if j != i:
                sib[j] += w
    # co-purchase from the newest purchases (seeds), each row's top neighbours
    seeds = sorted(bought.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.cf_seeds]
    cf: dict[str, float] = defaultdict(float)
    for seed, t in seeds:
        row = sorted(co.get(seed, {}).items(), key=lambda kv: (-kv[1], kv[0]))
        for j, c in row[: cfg.cf_per_seed]:
            cf[j] += cfg.decay(t, newest) * c
    cf = dict(sorted(cf.items(), key=_by_score)[: cfg.cf_candidates])
    head = _top(popularity, cfg.pop_candidates)
    candidates = set(rep) | set(sib) | set(cf) | {i for i, _ in head}
    pop = {j: popularity.get(j, 0.0) for j in candidates}
    top_pop = max(popularity.values(), default=0.0)
    if cfg.sib_pop and top_pop > 0:
        for j in sib:
            sib[j] *= 1.0 + cfg.sib_pop * math.log1p(pop[j]) / math.log1p(top_pop)
    vis = {}
    if cfg.w_vis and vec is not None and np.linalg.norm(vec) > 0:
        vis = _cosines(vec, [j for j in candidates if j in embeddings], embeddings)

    def scaled(signal: Mapping[str, float]) -> dict[str, float]:
        m = max(signal.values(), default=0.0)
        return {j: v / m for j, v in signal.items()} if m > 0 else {}

    rep_s, sib_s, cf_s = scaled(rep), scaled(sib), scaled(cf)
    cand_pop = max(pop.values(), default=0.0)
    pop_den = math.log1p(cand_pop) if cand_pop > 0 else 1.0
    rows = []
    for j in candidates - exclude:
        parts = {
            "rep": cfg.w_rep * rep_s.get(j, 0.0),
            "sib": cfg.w_sib * sib_s.get(j, 0.0),
            "cf": cfg.w_cf * cf_s.get(j, 0.0),
            "vis": cfg.w_vis * vis.get(j, 0.0),
            "pop": cfg.w_pop * math.log1p(pop[j]) / pop_den,
        }
        rows.append((j, sum(parts.values()), parts))
    rows.sort(key=lambda r: (-r[1], r[0]))
    tied = _ties_past_cut([(j, s) for j, s, _ in rows], cfg.k)
    ties = {j: (s, _reasons(parts)) for j, s, parts in rows[cfg.k :] if j in tied}
    rows = rows[: cfg.k]
    items = [(j, s) for j, s, _ in rows]
    reasons = [_reasons(parts) for _, _, parts in rows]
    have = {j for j, _ in items}
    for j, s in trending:  # short: fill with the trending list
        if len(items) >= cfg.k:
            break
        if j not in have:
            items.append((j, s))
            reasons.append(frozenset({"trending"}))
    return Expected(eid, user, "hybrid", items, tuple(reasons), ties)


def _ties_past_cut(ranked: list[tuple[str, float]], k: int, tol: float = 1e-6) -> dict[str, float]:
    """The items after the first ``k`` of ``ranked`` (best first) whose score is within
    ``tol`` of the k-th one's."""
    if len(ranked) <= k:
        return {}
    last = ranked[k - 1][1]
    return {i: s for i, s in ranked[k:] if last - s <= tol}


def _reasons(parts: Mapping[str, float], tol: float = 1e-6) -> frozenset[str]:
    """The largest contribution's reason (ties: the larger signal name), and any within tol."""
    best = max(parts, key=lambda name: (parts[name], name))
    near = {n for n, v in parts.items() if parts[best] - v <= tol}
    return frozenset(REASON_NAMES[n] for n in near | {best})


def _visual(
    user: str,
    hist: list[dict],
    embeddings: Mapping[str, np.ndarray],
    emb_ids: list[str],
    emb_mat: np.ndarray,
    cfg: RefConfig,
    exclude: set[str],
    trending: list[tuple[str, float]],
) -> Expected | None:
    if len(hist) < cfg.personalise_after:
        return None
    u = user_vector([(e["item_id"], e["kind"], float(e["ts"])) for e in hist], embeddings, cfg)
    if u is None or np.linalg.norm(u) == 0:
        return None
    u = u / np.linalg.norm(u)
    sims = emb_mat @ u / np.linalg.norm(emb_mat, axis=1)
    ranked = sorted(
        ((i, float(s)) for i, s in zip(emb_ids, sims) if i not in exclude), key=_by_score
    )
    visual = frozenset({"visual"})
    ties = {i: (s, visual) for i, s in _ties_past_cut(ranked, cfg.k).items()}
    ranked = ranked[: cfg.k]
    have = {i for i, _ in ranked}
    filled = (ranked + [(i, s) for i, s in trending if i not in have])[: cfg.k]
    reasons = [frozenset({"visual" if i in have else "trending"}) for i, _ in filled]
    return Expected(hist[-1]["event_id"], user, "visual", filled, tuple(reasons), ties)


# ------------------------------------------------------------------ one partition, in order


def _event(record, known: Mapping[str, object] | None) -> dict | None:
    """The interaction a user-events record holds, or None for what the users agent does not
    fold (a clock mark, an invalid record, an item it does not know)."""
    try:
        e = json.loads(record.value)
    except (TypeError, ValueError):
        return None
    if not isinstance(e, dict) or e.get("kind") not in ("view", "purchase"):
        return None  # clock marks ({"kind": "tick"}) and anything else
    if not all(e.get(f) for f in ("event_id", "user_id", "item_id")) or "ts" not in e:
        return None
    if known is not None and e["item_id"] not in known:
        return None  # dead-lettered by the worker
    return e


class PartitionFold:
    """One user-events partition folded in offset order with plain lists and dicts: each user's
    events (repeats of an event id dropped), the events popularity counts, co-purchase counts."""

    def __init__(self, embeddings: Mapping[str, np.ndarray], payloads, cfg: RefConfig) -> None:
        self.cfg = cfg
        self.embeddings = embeddings
        self.catalogue = Catalogue.of(payloads)
        self.emb_ids = sorted(embeddings)
        self.emb_mat = np.stack([embeddings[i].astype(np.float64) for i in self.emb_ids])
        self.events: dict[str, list[dict]] = defaultdict(list)
        self.event_ids: dict[str, set[str]] = defaultdict(set)
        self.counted: list[tuple[str, str, float, int]] = []
        self.co: dict[str, dict[str, int]] = defaultdict(dict)
        self._popularity: dict[str, float] | None = None

    def fold(self, record) -> dict | None:
        """Fold one record (offset order); returns the event folded, if any."""
        e = _event(record, self.embeddings)
        if e is None:
            return None
        user, cfg = e["user_id"], self.cfg
        if e["event_id"] in self.event_ids[user]:
            return None  # redelivered
        hist = self.events[user]
        item, kind, ts = e["item_id"], e["kind"], float(e["ts"])
        count = cfg.count(e)
        if kind == "purchase":
            newest = _newest_purchases(hist)
            day = int(ts // cfg.bucket_s)
            basket = {i for i, t in newest.items() if int(t // cfg.bucket_s) == day}
            if item not in basket:
                for a in sorted(basket):
                    self._increment(item, a)
                    self._increment(a, item)
            previous = newest.get(item)
            if cfg.distinct_buyers and previous is not None and ts - previous < cfg.window_s:
                count = 0  # this customer's purchase of the item is counted already
        if count:
            self.counted.append((item, kind, ts, count))
            self._popularity = None
        hist.append(e)
        self.event_ids[user].add(e["event_id"])
        return e

    def _increment(self, row_item: str, other: str) -> None:
        row = self.co[row_item]
        row[other] = row.get(other, 0) + 1
        if len(row) > self.cfg.co_neighbours:
            kept = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[: self.cfg.co_neighbours]
            self.co[row_item] = dict(kept)

    def popularity(self) -> dict[str, float]:
        if self._popularity is None:
            self._popularity = _scores(self.counted, self.cfg)
        return self._popularity

    def expect(self, user: str) -> Expected:
        """The user's recommendation now (after every record folded so far)."""
        hist = self.events.get(user)
        if not hist:
            raise KeyError(f"no events of user {user!r}")
        cfg = self.cfg
        exclude = _excluded(hist, cfg.exclude)
        trending = _top(self.popularity(), cfg.k, exclude)
        if cfg.ranker == "hybrid":
            got = _hybrid(
                user,
                hist,
                self.popularity(),
                self.co,
                self.embeddings,
                self.catalogue,
                cfg,
                exclude,
                trending,
            )
        else:
            got = _visual(
                user, hist, self.embeddings, self.emb_ids, self.emb_mat, cfg, exclude, trending
            )
        if got is not None:
            return got
        reasons = tuple(frozenset({"trending"}) for _ in trending)
        return Expected(hist[-1]["event_id"], user, "trending", trending, reasons)


def expected_at(
    records: Iterable,
    user_id: str,
    embeddings: Mapping[str, np.ndarray],
    payloads: Mapping[str, Mapping] | None,
    cfg: RefConfig,
) -> Expected:
    """``user_id``'s recommendation after ``records`` (one user-events partition up to the
    as-of offset: records with .offset and .value), computed from scratch."""
    fold = PartitionFold(embeddings, payloads, cfg)
    for r in sorted(records, key=lambda r: r.offset):
        fold.fold(r)
    return fold.expect(user_id)


def _by_partition(user_events) -> dict[int, list]:
    out = defaultdict(list)
    for r in user_events:
        out[r.partition].append(r)
    return {p: sorted(rs, key=lambda r: r.offset) for p, rs in sorted(out.items())}


def folded_events(user_events: list, known: Mapping[str, object] | None = None):
    """Each user's events in the order the worker folds them, repeats of an event id dropped
    (``known``: the items the worker knows; events on other items are not folded)."""
    out: dict[str, list[dict]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for _, records in _by_partition(user_events).items():
        for r in records:
            e = _event(r, known)
            if e is not None and (e["user_id"], e["event_id"]) not in seen:
                seen.add((e["user_id"], e["event_id"]))
                out[e["user_id"]].append(e)
    return out


def folded_at(user_events: list, known=None) -> dict[tuple[str, str], tuple[int, int]]:
    """(user, event id) -> (partition, offset) of the record where the worker folds it."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for p, records in _by_partition(user_events).items():
        for r in records:
            e = _event(r, known)
            if e is not None:
                out.setdefault((e["user_id"], e["event_id"]), (p, r.offset))
    return out


def as_of(rec, where: Mapping[tuple[str, str], tuple[int, int]]) -> tuple[int, int] | None:
    """The (partition, offset) a recommendation was computed at: its own fields, else (a
    worker that publishes one recommendation per event) the record of its event."""
    p = getattr(rec, "as_of_partition", None)
    o = getattr(rec, "as_of_offset", None)
    if p is not None and o is not None:
        return p, o
    return where.get((rec.user_id, rec.event_id))


def expected_recommendations(
    user_events: list, embeddings: dict[str, np.ndarray], cfg: RefConfig, payloads=None
) -> dict[str, Expected]:
    """The recommendation after each event (one event per batch), keyed by event id.

    user_events: records of the user-events topic (partition, offset, value JSON)."""
    out: dict[str, Expected] = {}
    for _, records in _by_partition(user_events).items():
        fold = PartitionFold(embeddings, payloads, cfg)
        for r in records:
            e = fold.fold(r)
            if e is not None:
                out[e["event_id"]] = fold.expect(e["user_id"])
    return out


# ------------------------------------------------------------------ comparison


def compare(rec, want: Expected, tol: float = 1e-6) -> str | None:
    """Why a published recommendation differs from the expected one (None: equal).

    Scores within ``tol`` are equal; items may trade places only with items of an equal score.
    """
    if rec.event_id != want.event_id:
        return f"event_id {rec.event_id} != {want.event_id}"
    if rec.strategy != want.strategy:
        return f"strategy {rec.strategy} != {want.strategy}"
    got = [(it.item_id, float(it.score)) for it in rec.items]
    if len(got) != len(want.items):
        return f"{len(got)} items != {len(want.items)}"
    if len({i for i, _ in got}) != len(got):
        return "an item listed twice"
    score_of = dict(want.items) | {i: s for i, (s, _) in want.ties.items()}
    for pos, ((gi, gs), (wi, ws)) in enumerate(zip(got, want.items)):
        if abs(gs - ws) > tol:
            return f"score at {pos}: {gi} {gs!r} != {wi} {ws!r}"
        if gi != wi and (gi not in score_of or abs(score_of[gi] - gs) > tol):
            return f"item at {pos}: {gi} != {wi}"
    if want.reasons:
        reasons_of = dict(zip([i for i, _ in want.items], want.reasons))
        reasons_of |= {i: r for i, (_, r) in want.ties.items()}
        for it in rec.items:
            if it.reason not in reasons_of[it.item_id]:
                return (
                    f"reason of {it.item_id}: {it.reason!r} not in {sorted(reasons_of[it.item_id])}"
                )
    return None


def check_recommendations(
    recs: Sequence,
    user_events: list,
    embeddings: Mapping[str, np.ndarray],
    payloads: Mapping[str, Mapping] | None,
    cfg: RefConfig,
    tol: float = 1e-6,
) -> list[str]:
    """Every recommendation with trigger "event" against the reference at its as-of point;
    returns one line per mismatch (empty: all equal). One pass per partition."""
    where = folded_at(user_events, embeddings)
    targets: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    mismatches: list[str] = []
    for rec in recs:
        if getattr(rec, "trigger", "event") != "event":
            continue
        at = as_of(rec, where)
        if at is None:
            mismatches.append(f"{rec.user_id} {rec.event_id}: no as-of point in user-events")
            continue
        targets[at[0]][at[1]].append(rec)
    partitions = _by_partition(user_events)
    for p, wanted in sorted(targets.items()):
        records = partitions.get(p, [])
        end = records[-1].offset if records else -1
        fold = PartitionFold(embeddings, payloads, cfg)
        folded = 0  # records[:folded] are folded
        for offset in sorted(wanted):  # as-of offsets, ascending
            # everything up to the as-of offset folded (an offset need not hold a record)
            while folded < len(records) and records[folded].offset <= offset:
                fold.fold(records[folded])
                folded += 1
            expected: dict[str, Expected] = {}
            for rec in wanted[offset]:
                tag = f"{rec.user_id} {rec.event_id} as of {p}:{offset}"
                if offset > end:
                    mismatches.append(f"{tag}: beyond the partition's end {end}")
                    continue
                if rec.user_id not in expected:
                    try:
                        expected[rec.user_id] = fold.expect(rec.user_id)
                    except KeyError as exc:
                        mismatches.append(f"{tag}: {exc}")
                        continue
                want = expected[rec.user_id]
                why = compare(rec, want, tol)
                if why:
                    got = [(i.item_id, round(i.score, 6), i.reason) for i in rec.items]
                    mismatches.append(
                        f"{tag}: {why}; got {got[:6]}; want "
                        f"{[(i, round(s, 6)) for i, s in want.items[:6]]}"
                    )
    return mismatches
