"""Online and prequential scoring over the topics: every event against the list its user had.

The users agent keeps each user's last published list in their state and scores the next event
against it (Prometheus counters ``vrec_online_*``, ``VrecMetrics.observe_hits``).
:func:`score_events` recounts the same from the ``user-events`` and ``recommendations`` topics:
a list computed as of offset ``a`` of a partition is the one an event at offset ``o > a`` of that
partition is scored against, until a newer list of the same variant replaces it. Repeats (an
event id or a source position already seen for the user) and events on unknown items are not
scored, as the worker does not fold them.

The prequential protocol (``vrec eval --protocol prequential``) scores the truth events this way;
with ``VREC_VARIANTS_SHADOW`` every user has a list of every variant, so the variants are
compared on the same events (paired differences, bootstrap over users).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class ScoredEvent:
    user_id: str
    event_id: str
    ts: float
    kind: str
    variant: str  # "-" without an experiment (as the worker's counters label it)
    trigger: str  # of the list
    strategy: str  # of the list
    rank: int  # 1-based; 0: the item was not in the list
    k: int


def _interactions(records: Iterable, known: Collection[str] | None):
    """(partition, offset, event dict) of the interactions the worker folds, in its order."""
    by_part: dict[int, list] = defaultdict(list)
    for r in records:
        by_part[r.partition].append(r)
    for p in sorted(by_part):
        seen_ids: set[tuple[str, str]] = set()
        sources: dict[tuple[str, int, int], int] = {}
        for r in sorted(by_part[p], key=lambda r: r.offset):
            try:
                e = json.loads(r.value)
            except (TypeError, ValueError):
                continue
            if not isinstance(e, dict) or e.get("kind") not in ("view", "purchase"):
                continue
            user, eid = e.get("user_id"), e.get("event_id")
            if not user or not eid or (known is not None and e.get("item_id") not in known):
                continue
            src = e.get("ingested_from")
            if src is not None:
                where = (user, src[0], src[1])
                if src[2] <= sources.get(where, -1):
                    continue
                sources[where] = src[2]
            if (user, eid) in seen_ids:
                continue
            seen_ids.add((user, eid))
            yield p, r.offset, e


def score_events(
    user_events: Iterable,
    recommendations: Iterable,
    *,
    known: Collection[str] | None = None,
    own: Callable[[str], str] | None = None,
) -> list[ScoredEvent]:
    """Score each folded interaction against its user's newest earlier list of each variant.

    ``user_events``: records with .partition, .offset, .value; ``recommendations``:
    streams.events.Recommendation with as-of fields (others are ignored); ``own(user)``: only
    the list of the user's own variant counts (the worker's online metrics), else every
    variant's (shadow mode)."""
    lists: dict[int, list] = defaultdict(list)
    for rec in recommendations:
        if rec.as_of_partition is not None and rec.as_of_offset is not None:
            lists[rec.as_of_partition].append(rec)
    for recs in lists.values():
        recs.sort(key=lambda r: r.as_of_offset)  # stable: topic order within one as-of point
    out: list[ScoredEvent] = []
    shown: dict[str, dict[str, object]] = defaultdict(dict)  # user -> variant -> newest list
    pos: dict[int, int] = defaultdict(int)
    for p, offset, e in _interactions(user_events, known):
        recs = lists.get(p, [])
        while pos[p] < len(recs) and recs[pos[p]].as_of_offset < offset:
            rec = recs[pos[p]]
            shown[rec.user_id][rec.variant or "-"] = rec
            pos[p] += 1
        user = e["user_id"]
        mine = shown.get(user, {})
        variants = [own(user) or "-"] if own is not None else sorted(mine)
        for variant in variants:
            rec = mine.get(variant)
            if rec is None:
                continue
            ids = [i.item_id for i in rec.items]
            rank = ids.index(e["item_id"]) + 1 if e["item_id"] in ids else 0
            out.append(
                ScoredEvent(
                    user,
                    e["event_id"],
                    float(e["ts"]),
                    e["kind"],
                    variant,
                    rec.trigger,
                    rec.strategy,
                    rank,
                    len(ids),
                )
            )
    return out


# ------------------------------------------------------------------ intervals


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (0, 0 for n = 0)."""
    if n == 0:
        return 0.0, 0.0
    p = hits / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def mean_interval(total: float, squares: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Normal interval of a mean from its sum and sum of squares."""
    if n == 0:
        return 0.0, 0.0
    mean = total / n
    var = max(0.0, squares / n - mean * mean) * n / max(1, n - 1)
    half = z * math.sqrt(var / n)
    return mean - half, mean + half


def summarise(
    scored: Iterable[ScoredEvent], by: Sequence[str] = ("variant",), at: int | None = None
) -> dict[tuple, dict[str, float]]:
    """Per group: events, hit@k (anywhere in the list, or in the first ``at``) with its Wilson
    interval, MRR with its normal interval."""
    groups: dict[tuple, list[ScoredEvent]] = defaultdict(list)
    for s in scored:
        groups[tuple(getattr(s, f) for f in by)].append(s)
    out = {}
    for key, rows in sorted(groups.items()):
        n = len(rows)
        hits = sum(1 for s in rows if s.rank and (at is None or s.rank <= at))
        rr = [1.0 / s.rank if s.rank else 0.0 for s in rows]
        lo, hi = wilson(hits, n)
        mlo, mhi = mean_interval(sum(rr), sum(x * x for x in rr), n)
        out[key] = {
            "events": n,
            "hits": hits,
            "hit_rate": hits / n,
            "hit_rate_ci": (lo, hi),
            "mrr": sum(rr) / n,
            "mrr_ci": (mlo, mhi),
        }
    return out


def paired_difference(
    scored: Iterable[ScoredEvent],
    a: str,
    b: str,
    metric: str = "hit",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean per-event difference of variant ``b`` minus ``a`` over the events both scored
    (shadow mode), with a 95% bootstrap interval that resamples users."""
    per_event: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for s in scored:
        value = (1.0 if s.rank else 0.0) if metric == "hit" else (1.0 / s.rank if s.rank else 0.0)
        per_event[(s.user_id, s.event_id)][s.variant] = value
    by_user: dict[str, list[float]] = defaultdict(list)
    for (user, _), values in per_event.items():
        if a in values and b in values:
            by_user[user].append(values[b] - values[a])
    users = sorted(by_user)
    if not users:
        return {"events": 0, "users": 0, "diff": 0.0, "ci": (0.0, 0.0)}
    sums = np.array([sum(by_user[u]) for u in users])
    counts = np.array([len(by_user[u]) for u in users])
    boot = np.concatenate(
        [
            sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
            for idx in resamples(len(users), n_boot, seed)
        ]
    )
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "events": int(counts.sum()),
        "users": len(users),
        "diff": float(sums.sum() / counts.sum()),
        "ci": (float(lo), float(hi)),
    }


def resamples(n: int, n_boot: int, seed: int = 0, chunk: int = 100):
    """Bootstrap index arrays (rows of ``n`` draws with replacement), ``chunk`` rows at a time
    so memory stays ~chunk * n."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def list_quality(
    recommendations: Iterable, vectors: Mapping[str, np.ndarray], catalogue_size: int
) -> dict[str, dict[str, float]]:
    """Per variant: intra-list visual diversity (mean 1 - cosine over the pairs of a list's
    items), catalogue coverage (distinct items listed / catalogue) and the share of items
    listed because they are trending."""
    acc: dict[str, dict] = defaultdict(lambda: {"div": [], "items": set(), "trend": 0, "n": 0})
    for rec in recommendations:
        a = acc[rec.variant or "-"]
        ids = [i.item_id for i in rec.items]
        a["items"].update(ids)
        a["trend"] += sum(1 for i in rec.items if i.reason == "trending")
        a["n"] += len(ids)
        rows = [vectors[i] for i in ids if i in vectors]
        if len(rows) >= 2:
            m = np.stack(rows).astype(np.float64)
            m /= np.linalg.norm(m, axis=1, keepdims=True)
            cos = m @ m.T
            n = len(rows)
            a["div"].append(1.0 - (cos.sum() - n) / (n * (n - 1)))
    return {
        v: {
            "diversity": float(np.mean(a["div"])) if a["div"] else 0.0,
            "coverage": len(a["items"]) / max(1, catalogue_size),
            "trending_share": a["trend"] / max(1, a["n"]),
            "lists": float(len(a["div"])),
        }
        for v, a in sorted(acc.items())
    }
