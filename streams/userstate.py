"""User vectors: a time-decayed, per-kind weighted mean of item vectors (pure functions).

An event of kind ``k`` at event time ``t`` on an item with unit vector ``v`` adds
``w_k * 2**((t - ref_ts) / half_life) * v`` to ``acc`` and the same weight to ``wsum``. Because all
terms decay by the same factor as time passes, the mean ``acc / wsum`` *is* the decayed mean at any
later time, and the fold does not depend on the order the events arrive in. ``ref_ts`` is moved
forward (rescaling ``acc`` and ``wsum``) when the exponent grows large, so nothing overflows.

``UserState`` also keeps the recent history (with event ids), the set of seen/purchased items and,
for idempotent replays, the last input offset folded per partition: an event is folded once even
when Kafka delivers it twice (same offset) or an upstream retry re-sends it (same event id, within
the recent history).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

_REBASE_EXPONENT = 60.0  # 2**60 ~ 1e18: rebase well before float64 trouble


@dataclass(frozen=True)
class DecayConfig:
    half_life_s: float
    kind_weights: Mapping[str, float]

    @classmethod
    def from_settings(cls, settings) -> DecayConfig:
        return cls(
            half_life_s=settings.half_life_days * 86_400.0,
            kind_weights={"view": settings.weight_view, "purchase": settings.weight_purchase},
        )


@dataclass(frozen=True)
class HistoryEntry:
    item_id: str
    kind: str
    ts: float
    event_id: str = ""


@dataclass(frozen=True)
class UserState:
    user_id: str
    acc: np.ndarray | None = None  # float64, decayed weighted sum of item vectors
    wsum: float = 0.0
    ref_ts: float = 0.0
    last_ts: float = 0.0  # newest event time folded
    n_events: int = 0
    history: tuple[HistoryEntry, ...] = ()  # newest last
    seen: tuple[str, ...] = ()  # distinct items, oldest first
    purchased: tuple[str, ...] = ()
    offsets: Mapping[int, int] = field(default_factory=dict)  # partition -> last offset folded
    # repurchase signal: item -> sum over its purchases of 2**((t - ref_ts) / half_life)
    rep: Mapping[str, float] = field(default_factory=dict)
    last_purchase: Mapping[str, float] = field(default_factory=dict)  # item -> newest ts

    @property
    def vector(self) -> np.ndarray | None:
        """The decayed weighted mean (float64), or None with no weight yet."""
        if self.acc is None or self.wsum <= 0:
            return None
        return self.acc / self.wsum

    def already_folded(self, partition: int, offset: int, event_id: str = "") -> bool:
        """True for a redelivered input (offset already folded) or a repeated event id."""
        last = self.offsets.get(partition)
        if last is not None and offset <= last:
            return True
        return bool(event_id) and any(h.event_id == event_id for h in self.history)

    # -- serialisation (Faust table values are raw bytes) ------------------------------------
    def to_bytes(self) -> bytes:
        doc = {
            "user_id": self.user_id,
            "acc": None
            if self.acc is None
            else base64.b64encode(self.acc.astype("<f8").tobytes()).decode(),
            "wsum": self.wsum,
            "ref_ts": self.ref_ts,
            "last_ts": self.last_ts,
            "n_events": self.n_events,
            "history": [[h.item_id, h.kind, h.ts, h.event_id] for h in self.history],
            "seen": list(self.seen),
            "purchased": list(self.purchased),
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "rep": self.rep,
            "last_purchase": self.last_purchase,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        doc = json.loads(raw)
        acc = doc.get("acc")
        return cls(
            user_id=doc["user_id"],
            acc=None if acc is None else np.frombuffer(base64.b64decode(acc), dtype="<f8").copy(),
            wsum=doc["wsum"],
            ref_ts=doc["ref_ts"],
            last_ts=doc["last_ts"],
            n_events=doc["n_events"],
            history=tuple(HistoryEntry(*h) for h in doc["history"]),
            seen=tuple(doc["seen"]),
            purchased=tuple(doc["purchased"]),
            offsets={int(p): o for p, o in doc["offsets"].items()},
            rep=doc.get("rep", {}),
            last_purchase=doc.get("last_purchase", {}),
        )


def _append_distinct(items: tuple[str, ...], item_id: str, cap: int) -> tuple[str, ...]:
    if item_id in items:
        return items
    out = items + (item_id,)
    return out[-cap:] if len(out) > cap else out


def fold_event(
    state: UserState,
    *,
    item_id: str,
    kind: str,
    ts: float,
    vector: np.ndarray,
    config: DecayConfig,
    history_len: int = 50,
    max_seen: int = 1000,
    partition: int | None = None,
    offset: int | None = None,
    event_id: str = "",
) -> UserState:
    """Fold one event into the user's state and return the new state (the input is unchanged)."""
    weight = float(config.kind_weights.get(kind, 0.0))
    acc, wsum, ref_ts = state.acc, state.wsum, state.ref_ts
    rep = dict(state.rep)
    if state.n_events == 0:
        ref_ts = ts
    exponent = (ts - ref_ts) / config.half_life_s
    if exponent > _REBASE_EXPONENT:
        # Move the reference forward to ts: scale old terms down instead of the new one up.
        scale = math.pow(2.0, -exponent)
        acc = None if acc is None else acc * scale
        wsum, ref_ts, exponent = wsum * scale, ts, 0.0
        rep = {i: r * scale for i, r in rep.items()}
    w = weight * math.pow(2.0, exponent)
    last_purchase = state.last_purchase
    if kind == "purchase":
        rep[item_id] = rep.get(item_id, 0.0) + math.pow(2.0, exponent)
        last_purchase = dict(last_purchase)
        last_purchase[item_id] = max(ts, last_purchase.get(item_id, ts))
        if len(last_purchase) > max_seen:  # forget the item bought longest ago
            oldest = min(last_purchase, key=lambda i: (last_purchase[i], i))
            del last_purchase[oldest]
            rep.pop(oldest, None)
    v = np.asarray(vector, dtype=np.float64)
    if weight > 0:
        acc = v * w if acc is None else acc + v * w
        wsum = wsum + w
    history = state.history + (HistoryEntry(item_id, kind, ts, event_id),)
    offsets = dict(state.offsets)
    if partition is not None and offset is not None:
        offsets[partition] = max(offset, offsets.get(partition, -1))
    return replace(
        state,
        acc=acc,
        wsum=wsum,
        ref_ts=ref_ts,
        last_ts=max(state.last_ts, ts),
        n_events=state.n_events + 1,
        history=history[-history_len:],
        seen=_append_distinct(state.seen, item_id, max_seen),
        purchased=(
            _append_distinct(state.purchased, item_id, max_seen)
            if kind == "purchase"
            else state.purchased
        ),
        offsets=offsets,
        rep=rep,
        last_purchase=last_purchase,
    )


def excluded_items(state: UserState, policy: str) -> frozenset[str]:
    """Items a user must not be recommended under the exclusion policy."""
    if policy == "none":
        return frozenset()
    if policy == "purchased":
        return frozenset(state.purchased)
    if policy == "seen":
        return frozenset(state.seen)
    raise ValueError(f"unknown exclusion policy {policy!r}")
