"""Per-user state: decayed item weights (the user vector's recipe), recent history, dedupe marks.

An event of kind ``k`` at event time ``t`` on item ``i`` adds ``w_k * 2**((t - ref_ts) /
half_life)`` to the item's weight ``vw_i`` and to ``wsum``. The user vector is then
``sum_i vw_i * v_i / wsum`` over the item vectors ``v_i`` of the catalogue
(:func:`user_vector`): since every term decays by the same factor, this is the decayed mean at
any later time and the fold is order independent. ``ref_ts`` moves forward (rescaling every
weight) before the exponent gets large, so nothing overflows.

Keeping weights per item instead of a dense vector makes the state small (a few dozen bytes per
distinct item instead of 10 KB for a float64 1280-d vector) and lets a re-uploaded item image
reach every user. The state keeps at most ``max_seen`` distinct items: past it the item touched
longest ago is forgotten, with its weight.

Purchases also keep ``rep_i`` (the decayed count of purchases of ``i``, for the repurchase signal)
and the newest purchase time. For idempotent replays the state keeps the last input offset folded
per partition, the last source offset folded per source partition (the views/purchases position
the ingest agent stamped on the event) and a 64-bit hash of the recent event ids: an event is
folded once even when Kafka delivers it twice (same offset), the ingest agent forwards it again
after a crash (same source position, any number of events later) or an upstream retry re-sends it
(same event id, within the recent history).

The state is mutable (``fold`` changes it in place); the users agent decodes it from the table,
folds a micro-batch and encodes it once (:meth:`UserState.to_bytes`, a compact binary layout).
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

_REBASE_EXPONENT = 60.0  # 2**60 ~ 1e18: rebase well before float64 trouble
KINDS = ("view", "purchase")


@dataclass(frozen=True)
class DecayConfig:
    half_life_s: float
    kind_weights: Mapping[str, float]

    @classmethod
    def from_settings(cls, settings) -> DecayConfig:
        """From ``Settings.users`` (or the Settings themselves: the fields have the same names)."""
        return cls(
            half_life_s=settings.half_life_days * 86_400.0,
            kind_weights={"view": settings.weight_view, "purchase": settings.weight_purchase},
        )


def event_hash(event_id: str) -> int:
    """64-bit hash of an event id (the dedupe window keeps these, not the ids)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@dataclass
class ItemStat:
    """One item in a user's state."""

    vw: float = 0.0  # decayed kind-weighted count (the item's weight in the user vector)
    rep: float = 0.0  # decayed count of purchases (repurchase signal)
    bought_ts: float | None = None  # newest purchase time, None if never bought
    touched_ts: float = 0.0  # newest event time on the item (eviction order)


@dataclass(frozen=True)
class HistoryEntry:
    item_id: str
    kind: str
    ts: float
    event_hash: int = 0


TRIGGERS = ("event", "day_close")
STRATEGIES = ("hybrid", "visual", "trending")


def item_hash(item_id: str) -> int:
    """32 bits of an item id, for the last list a user state keeps (a false hit needs one of
    the list's 12 hashes to equal the event item's: ~3e-9 per event)."""
    return zlib.crc32(item_id.encode())


@dataclass
class LastList:
    """The last list published to the user (online metrics score the next event against it)."""

    variant: str  # "" without an experiment
    trigger: str  # TRIGGERS
    strategy: str  # STRATEGIES
    items: tuple[int, ...]  # item_hash of each item, best first

    def rank_of(self, item_id: str) -> int:
        """1-based position of the item in the list, 0 when it is not there."""
        h = item_hash(item_id)
        for n, x in enumerate(self.items, 1):
            if x == h:
                return n
        return 0


@dataclass
class UserState:
    user_id: str
    wsum: float = 0.0
    ref_ts: float = 0.0
    last_ts: float = 0.0  # newest event time folded
    n_events: int = 0
    items: dict[str, ItemStat] = field(default_factory=dict)  # insertion order: first touch
    history: list[HistoryEntry] = field(default_factory=list)  # newest last
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> last offset folded
    # (source topic code, source partition) -> last source offset folded (Interaction.source)
    sources: dict[tuple[int, int], int] = field(default_factory=dict)
    last_list: LastList | None = None

    # -- views used by the rankers ----------------------------------------------------------
    @property
    def purchased(self) -> list[str]:
        return [i for i, st in self.items.items() if st.bought_ts is not None]

    @property
    def rep(self) -> dict[str, float]:
        return {i: st.rep for i, st in self.items.items() if st.bought_ts is not None}

    @property
    def last_purchase(self) -> dict[str, float]:
        return {i: st.bought_ts for i, st in self.items.items() if st.bought_ts is not None}

    def already_folded(
        self,
        partition: int,
        offset: int,
        event_id: str = "",
        source: tuple[int, int, int] | None = None,
    ) -> bool:
        """True for a redelivered input (offset already folded), a re-forwarded one (its source
        position already folded) or a repeated event id."""
        last = self.offsets.get(partition)
        if last is not None and offset <= last:
            return True
        if source is not None and source[2] <= self.sources.get(source[:2], -1):
            return True
        if not event_id:
            return False
        h = event_hash(event_id)
        return any(e.event_hash == h for e in self.history)

    def same_day_basket(self, day: int, day_of) -> set[str]:
        """Items whose newest purchase falls in bucket ``day`` (``day_of(ts) -> bucket``)."""
        items = self.items.items()
        return {i for i, st in items if st.bought_ts is not None and day_of(st.bought_ts) == day}

    # -- the fold ---------------------------------------------------------------------------
    def fold(
        self,
        *,
        item_id: str,
        kind: str,
        ts: float,
        config: DecayConfig,
        history_len: int = 50,
        max_seen: int = 1000,
        partition: int | None = None,
        offset: int | None = None,
        event_id: str = "",
        source: tuple[int, int, int] | None = None,
    ) -> None:
        """Fold one event into this state (in place)."""
        weight = float(config.kind_weights.get(kind, 0.0))
        if self.n_events == 0:
            self.ref_ts = ts
        exponent = (ts - self.ref_ts) / config.half_life_s
        if exponent > _REBASE_EXPONENT:
            # Move the reference forward to ts: scale old terms down instead of the new one up.
            scale = math.pow(2.0, -exponent)
            for st in self.items.values():
                st.vw *= scale
                st.rep *= scale
            self.wsum *= scale
            self.ref_ts, exponent = ts, 0.0
        decay = math.pow(2.0, exponent)
        st = self.items.get(item_id)
        if st is None:
            st = self.items[item_id] = ItemStat(touched_ts=ts)
        st.touched_ts = max(st.touched_ts, ts)
        if weight > 0:
            st.vw += weight * decay
            self.wsum += weight * decay
        if kind == "purchase":
            st.rep += decay
            st.bought_ts = ts if st.bought_ts is None else max(st.bought_ts, ts)
        if len(self.items) > max_seen:  # forget the item touched longest ago
            oldest = min(self.items, key=lambda i: (self.items[i].touched_ts, i))
            self.wsum = max(0.0, self.wsum - self.items.pop(oldest).vw)
        h = event_hash(event_id) if event_id else 0
        self.history.append(HistoryEntry(item_id, kind, ts, h))
        if len(self.history) > history_len:
            del self.history[: len(self.history) - history_len]
        if partition is not None and offset is not None:
            self.offsets[partition] = max(offset, self.offsets.get(partition, -1))
        if source is not None:
            where = (source[0], source[1])
            self.sources[where] = max(source[2], self.sources.get(where, -1))
        self.last_ts = ts if self.n_events == 0 else max(self.last_ts, ts)
        self.n_events += 1

    # -- serialisation (Faust table values are raw bytes) ------------------------------------
    def to_bytes(self) -> bytes:
        return encode_state(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        return decode_state(raw)


class VectorSource(Protocol):
    """What :func:`user_vector` needs of the catalogue (streams.catalogue.Catalogue)."""

    def indices(self, item_ids: Iterable[str]) -> tuple[list[str], np.ndarray]: ...

    def rows(self, idx: np.ndarray) -> np.ndarray: ...


def user_vector(state: UserState, catalogue: VectorSource) -> np.ndarray | None:
    """The decayed weighted mean of the user's item vectors (float64), or None without weight.

    Items missing from the catalogue (not embedded) are left out of the mean.
    """
    ids, idx = catalogue.indices(i for i, st in state.items.items() if st.vw > 0)
    if not ids:
        return None
    w = np.fromiter((state.items[i].vw for i in ids), dtype=np.float64, count=len(ids))
    total = float(w.sum())
    if total <= 0:
        return None
    return (w @ catalogue.rows(idx).astype(np.float64)) / total


def excluded_items(state: UserState, policy: str) -> frozenset[str]:
    """Items a user must not be recommended under the exclusion policy."""
    if policy == "none":
        return frozenset()
    if policy == "purchased":
        return frozenset(state.purchased)
    if policy == "seen":
        return frozenset(state.items)
    raise ValueError(f"unknown exclusion policy {policy!r}")


# -- binary layout ----------------------------------------------------------------------------
# header: version u8, n_events u32, wsum f64, ref_ts f64, last_ts f64, user id (u16 len + utf-8)
# offsets: u8 count, then (u16 partition, i64 offset)
# sources: u16 count, then (u8 topic code, u16 partition, i64 offset)
# last list: u8 0 (none) or 1, then u8 trigger, u8 strategy, u8 variant len + utf-8,
#            u8 count, then u32 item hashes
# items: u32 count, then (u16 id len + utf-8, u8 flags, f64 vw, f64 touched_ts
#        [, f64 rep, f64 bought_ts if bought])
# history: u16 count, then (u32 item index into items or 0xFFFFFFFF + u16 len + id, u8 kind,
#          f64 ts, u64 event hash)
_VERSION = 4
_HEAD = struct.Struct("<BIdddH")
_OFFSET = struct.Struct("<Hq")
_SOURCE = struct.Struct("<BHq")
_ITEM = struct.Struct("<Bdd")
_BOUGHT = struct.Struct("<dd")
_HIST = struct.Struct("<IBdQ")
_INLINE = 0xFFFFFFFF
_LEN = struct.Struct("<H")
_BOUGHT_FLAG = 1


def _id_bytes(item_id: str) -> bytes:
    raw = item_id.encode()
    return _LEN.pack(len(raw)) + raw


def encode_state(s: UserState) -> bytes:
    uid = s.user_id.encode()
    out = [_HEAD.pack(_VERSION, s.n_events, s.wsum, s.ref_ts, s.last_ts, len(uid)), uid]
    out.append(bytes((len(s.offsets),)))
    out.extend(_OFFSET.pack(p, o) for p, o in sorted(s.offsets.items()))
    out.append(_LEN.pack(len(s.sources)))
    out.extend(_SOURCE.pack(t, p, o) for (t, p), o in sorted(s.sources.items()))
    out.append(_encode_list(s.last_list))
    out.append(struct.pack("<I", len(s.items)))
    pos: dict[str, int] = {}
    for n, (item_id, st) in enumerate(s.items.items()):
        pos[item_id] = n
        bought = st.bought_ts is not None
        out.append(_id_bytes(item_id))
        out.append(_ITEM.pack(_BOUGHT_FLAG if bought else 0, st.vw, st.touched_ts))
        if bought:
            out.append(_BOUGHT.pack(st.rep, st.bought_ts))
    out.append(struct.pack("<H", len(s.history)))
    for h in s.history:
        ref = pos.get(h.item_id, _INLINE)
        out.append(_HIST.pack(ref, KINDS.index(h.kind), h.ts, h.event_hash))
        if ref == _INLINE:
            out.append(_id_bytes(h.item_id))
    return b"".join(out)


def _encode_list(last: LastList | None) -> bytes:
    if last is None:
        return b"\0"
    name = last.variant.encode()
    return b"".join(
        [
            bytes((1, TRIGGERS.index(last.trigger), STRATEGIES.index(last.strategy), len(name))),
            name,
            bytes((len(last.items),)),
            struct.pack(f"<{len(last.items)}I", *last.items),
        ]
    )


def _decode_list(view: memoryview, at: int) -> tuple[LastList | None, int]:
    if view[at] == 0:
        return None, at + 1
    if view[at] != 1:
        raise ValueError(f"user state: last-list flag {view[at]}")
    trigger, strategy = TRIGGERS[view[at + 1]], STRATEGIES[view[at + 2]]
    variant, at = _read_str(view, at + 4, view[at + 3])
    n = view[at]
    items = struct.unpack_from(f"<{n}I", view, at + 1)
    return LastList(variant, trigger, strategy, tuple(items)), at + 1 + 4 * n


def decode_state(raw: bytes) -> UserState:
    """The state encoded by :func:`encode_state`; ValueError for anything else."""
    try:
        return _decode(memoryview(raw))
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt user state: {exc}") from exc


def _read_str(view: memoryview, at: int, n: int) -> tuple[str, int]:
    if at + n > len(view):
        raise IndexError("string past the end")
    return bytes(view[at : at + n]).decode(), at + n


def _read_id(view: memoryview, at: int) -> tuple[str, int]:
    (n,) = _LEN.unpack_from(view, at)
    return _read_str(view, at + _LEN.size, n)


def _decode(view: memoryview) -> UserState:
    raw = view
    version, n_events, wsum, ref_ts, last_ts, uid_len = _HEAD.unpack_from(view, 0)
    if version != _VERSION:
        raise ValueError(f"user state version {version}, expected {_VERSION}")
    at = _HEAD.size
    user_id, at = _read_str(view, at, uid_len)
    offsets = {}
    for _ in range(view[at]):
        p, o = _OFFSET.unpack_from(view, at + 1)
        offsets[p] = o
        at += _OFFSET.size
    at += 1
    sources = {}
    (n_sources,) = _LEN.unpack_from(view, at)
    at += _LEN.size
    for _ in range(n_sources):
        t, p, o = _SOURCE.unpack_from(view, at)
        sources[(t, p)] = o
        at += _SOURCE.size
    last_list, at = _decode_list(view, at)
    (n_items,) = struct.unpack_from("<I", view, at)
    at += 4
    items: dict[str, ItemStat] = {}
    ids: list[str] = []
    for _ in range(n_items):
        item_id, at = _read_id(view, at)
        flags, vw, touched = _ITEM.unpack_from(view, at)
        at += _ITEM.size
        st = ItemStat(vw=vw, touched_ts=touched)
        if flags & _BOUGHT_FLAG:
            st.rep, st.bought_ts = _BOUGHT.unpack_from(view, at)
            at += _BOUGHT.size
        if item_id in items:
            raise ValueError(f"user state: item {item_id!r} twice")
        items[item_id] = st
        ids.append(item_id)
    (n_hist,) = struct.unpack_from("<H", view, at)
    at += 2
    history = []
    for _ in range(n_hist):
        ref, kind, ts, h = _HIST.unpack_from(view, at)
        at += _HIST.size
        if ref == _INLINE:
            item_id, at = _read_id(view, at)
        else:
            item_id = ids[ref]
        history.append(HistoryEntry(item_id, KINDS[kind], ts, h))
    if at != len(raw):
        raise ValueError(f"user state: {len(raw) - at} trailing bytes")
    return UserState(
        user_id=user_id,
        wsum=wsum,
        ref_ts=ref_ts,
        last_ts=last_ts,
        n_events=n_events,
        items=items,
        history=history,
        offsets=offsets,
        sources=sources,
        last_list=last_list,
    )
