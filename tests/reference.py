"""An independent reference for what the worker must publish, in plain numpy.

It does not import vrec's user-state, trending or ranking code: it recomputes each user's decayed
mean from the full list of that user's events, and trending by rescanning the window, so a bug in
the incremental versions shows up as a difference.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Expected:
    event_id: str
    user_id: str
    strategy: str
    items: list[tuple[str, float]]


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
        )

    def count(self, event: dict) -> int:
        """What one counted event adds to its item's popularity (its channel's weight)."""
        channel = event.get("channel")
        return (self.channel_weights or {}).get(channel, 1) if channel else 1


def trending_list(events: list[dict], cfg: RefConfig, exclude=frozenset()):
    """The trending list after ``events`` (dicts in processing order), as the worker publishes
    it: a customer's repeat purchase of an item inside the window counts once."""
    counted, last = [], {}
    for e in events:
        ev = (e["item_id"], e["kind"], float(e["ts"]), cfg.count(e))
        key = (e["user_id"], ev[0])
        if ev[1] == "purchase":
            prev = last.get(key)
            last[key] = ev[2] if prev is None else max(prev, ev[2])
            if cfg.distinct_buyers and prev is not None and ev[2] - prev < cfg.window_s:
                continue
        counted.append(ev)
    return _trending(counted, cfg, set(exclude))


def _trending(
    events: list[tuple[str, str, float, int]], cfg: RefConfig, exclude: set[str]
) -> list[tuple[str, float]]:
    """(item, kind, ts, count) events -> the top k by weight x count within the window."""
    buckets = [int(ts // cfg.bucket_s) for _, _, ts, _ in events]
    now = max(buckets)
    n = max(1, math.ceil(cfg.window_s / cfg.bucket_s))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (item, kind, _, count), b in zip(events, buckets):
        if b > now - n:
            counts[item][kind] += count
    # weight x count per kind (not a running float sum): equal counts give equal scores
    score = {i: sum(cfg.weights[k] * c for k, c in sorted(kc.items())) for i, kc in counts.items()}
    ranked = sorted(
        ((i, s) for i, s in score.items() if s > 0 and i not in exclude),
        key=lambda x: (-x[1], x[0]),
    )
    return ranked[: cfg.k]


def user_vector(user_events, embeddings: dict[str, np.ndarray], cfg: RefConfig):
    """The decayed weighted mean of a user's item vectors, recomputed from scratch."""
    t_max = max(ts for _, _, ts in user_events)
    num = np.zeros(len(next(iter(embeddings.values()))))
    den = 0.0
    for item, kind, ts in user_events:
        w = cfg.weights[kind] * 2.0 ** ((ts - t_max) / cfg.half_life_s)
        num += w * embeddings[item].astype(np.float64)
        den += w
    return None if den <= 0 else num / den


def _visual(user_events, embeddings, emb_ids, emb_mat, cfg: RefConfig, exclude: set[str]):
    u = user_vector(user_events, embeddings, cfg)
    if u is None:
        return None
    u = u / np.linalg.norm(u)
    sims = emb_mat @ u / np.linalg.norm(emb_mat, axis=1)
    ranked = sorted(
        ((i, float(s)) for i, s in zip(emb_ids, sims) if i not in exclude),
        key=lambda x: (-x[1], x[0]),
    )
    return ranked[: cfg.k]


def folded_events(user_events: list) -> dict[str, list[dict]]:
    """Each user's events in the order the worker folds them, repeats of an event id dropped."""
    out: dict[str, list[dict]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for r in sorted(user_events, key=lambda r: (r.partition, r.offset)):
        e = json.loads(r.value)
        if (e["user_id"], e["event_id"]) not in seen:
            seen.add((e["user_id"], e["event_id"]))
            out[e["user_id"]].append(e)
    return out


def expected_recommendations(
    user_events: list, embeddings: dict[str, np.ndarray], cfg: RefConfig
) -> dict[str, Expected]:
    """user_events: records of the user-events topic (partition, offset, value JSON)."""
    emb_ids = sorted(embeddings)
    emb_mat = np.stack([embeddings[i].astype(np.float64) for i in emb_ids])
    by_partition = defaultdict(list)
    for r in user_events:
        by_partition[r.partition].append(r)
    out: dict[str, Expected] = {}
    for _, records in sorted(by_partition.items()):
        records.sort(key=lambda r: r.offset)
        seen_ids: dict[str, set[str]] = defaultdict(set)
        per_user: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
        partition_events: list[tuple[str, str, float]] = []
        for r in records:
            e = json.loads(r.value)
            user, eid = e["user_id"], e["event_id"]
            if eid in seen_ids[user]:
                continue
            seen_ids[user].add(eid)
            ev = (e["item_id"], e["kind"], float(e["ts"]))
            # popularity counts a repeat purchase of the same item inside the window once
            earlier = [t for i, k, t in per_user[user] if i == ev[0] and k == "purchase"]
            repeat = (
                cfg.distinct_buyers
                and ev[1] == "purchase"
                and bool(earlier)
                and ev[2] - max(earlier) < cfg.window_s
            )
            per_user[user].append(ev)
            if not repeat:
                partition_events.append((*ev, cfg.count(e)))
            hist = per_user[user]
            if cfg.exclude == "purchased":
                exclude = {i for i, k, _ in hist if k == "purchase"}
            elif cfg.exclude == "seen":
                exclude = {i for i, _, _ in hist}
            else:
                exclude = set()
            popular = _trending(partition_events, cfg, exclude)
            visual = None
            if len(hist) >= cfg.personalise_after:
                visual = _visual(hist, embeddings, emb_ids, emb_mat, cfg, exclude)
            if visual is None:
                out[eid] = Expected(eid, user, "trending", popular)
                continue
            have = {i for i, _ in visual}
            filled = visual + [(i, s) for i, s in popular if i not in have]
            out[eid] = Expected(eid, user, "visual", filled[: cfg.k])
    return out
