"""The users agent's logic over one micro-batch of a user-events partition (pure, no Kafka).

``fold_batch`` folds the batch's interactions, in offset order, into the users' states and the
partition's shared state (trending counts, co-purchase counts, active days) and returns the new
states and every table write; ``rank_batch`` then ranks each user who had events once, against
the partition's state after the whole batch (:mod:`streams.recommend`), and returns the
recommendation records. :func:`process_batch` does both (tests drive it directly). The agent in
``streams/agents/users.py`` only reads and writes tables and topics around these functions.

A redelivered record (offset or source position already folded) or a repeated event id is
skipped, and a trending or co-purchase cell already holding a record's count (the cell's offset,
streams/tables.py) is not counted again; a record that cannot be used (bad JSON, unknown item)
becomes a dead letter and changes nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from streams.catalogue import Catalogue
from streams.dayclose import ActiveDays
from streams.events import Interaction, Recommendation, Tick, is_tick, json_object
from streams.experiment import Experiment
from streams.ranking import Trending
from streams.ranking.copurchase import CoPurchase
from streams.recommend import (
    Candidates,
    RankConfig,
    RankContext,
    Ranking,
    rank_states,
    remember_lists,
    to_record,
    visual_queries,
)
from streams.settings import Settings
from streams.tables import (
    active_key,
    copurchase_key,
    copurchase_value,
    trending_key,
    trending_value,
)
from streams.userstate import DecayConfig, UserState


@dataclass(frozen=True)
class InputRecord:
    """One user-events record as the agent read it."""

    partition: int
    offset: int
    value: bytes


@dataclass(frozen=True)
class FoldConfig:
    """The folding settings, read once from :class:`Settings`."""

    decay: DecayConfig
    history_len: int
    max_seen: int
    window_s: float
    distinct_buyers: bool
    channel_weights: Mapping[int, int]
    copurchase: bool  # co-purchase counts are kept for the hybrid ranker only
    day_close: bool

    @classmethod
    def from_settings(cls, s: Settings) -> FoldConfig:
        users, pop = s.users, s.popularity
        return cls(
            decay=DecayConfig.from_settings(users),
            history_len=users.history_len,
            max_seen=users.max_seen,
            window_s=pop.window_days * 86_400.0,
            distinct_buyers=pop.distinct_buyers,
            channel_weights=dict(pop.channel_weights),
            copurchase=s.ranking.ranker == "hybrid",
            day_close=s.day_close.refresh,
        )


@dataclass
class PartitionState:
    """The shared state of one user-events partition, mirrored from its tables."""

    trending: Trending
    copurchase: CoPurchase
    active: ActiveDays = field(default_factory=ActiveDays)
    # trending / co-purchase key -> offset of the last record counted in it, as restored from
    # the tables (streams/tables.py): a redelivered record is not counted twice in a cell
    applied: dict[bytes, int] = field(default_factory=dict)
    # the newest offset whose counts the mirrors hold: the last batch's end, or after a restart
    # the newest offset in ``applied`` (a crash after a batch's shared cells were written, before
    # its user states: a redelivered batch that ends earlier is ranked with those counts)
    counted_through: int = -1


class EncodedStates(Mapping[bytes, bytes]):
    """The users table's writes of a batch: user id -> the state's bytes, encoded when read.

    Ranking still changes the states after the fold (each keeps the list just published), so
    encoding when the writes are applied encodes each state once per batch.
    """

    def __init__(self, states: Mapping[str, UserState]) -> None:
        self._states = states

    def __getitem__(self, key: bytes) -> bytes:
        return self._states[key.decode()].to_bytes()

    def __iter__(self) -> Iterator[bytes]:
        return (user_id.encode() for user_id in self._states)

    def __len__(self) -> int:
        return len(self._states)


@dataclass
class TableWrites:
    """Table key -> new value (None: delete); the last write of a key in a batch wins."""

    users: Mapping[bytes, bytes] = field(default_factory=dict)
    trending: dict[bytes, bytes | None] = field(default_factory=dict)
    copurchase: dict[bytes, bytes | None] = field(default_factory=dict)
    active: dict[bytes, bytes | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users) + len(self.trending) + len(self.copurchase) + len(self.active)


@dataclass(frozen=True)
class OnlineHit:
    """An event scored against the last list published to its user before it."""

    variant: str
    trigger: str  # of that list: "event" or "day_close"
    strategy: str  # of that list
    kind: str  # of the event: "view" or "purchase"
    rank: int  # 1-based position of the event's item in the list; 0: not in it
    k: int  # the list's length


@dataclass
class Folded:
    partition: int
    states: dict[str, UserState]  # users whose state changed, after the batch
    last_event: dict[str, Interaction]  # each of them: the newest event folded
    writes: TableWrites
    dead: list[tuple[str, InputRecord]]  # (reason, record)
    # the offset the shared counts are as of: the batch's last record's, unless a restart
    # restored counts of later records (PartitionState.counted_through)
    as_of: int | None
    hits: list[OnlineHit] = field(default_factory=list)  # online metrics, in folding order


def popularity_count(state: UserState, event: Interaction, cfg: FoldConfig) -> int:
    """How much an event adds to popularity: 0 for a repeat purchase of the same item inside
    the window (distinct buyers), else the sales channel's weight (1 by default)."""
    if event.kind == "purchase" and cfg.distinct_buyers:
        st = state.items.get(event.item_id)
        previous = None if st is None else st.bought_ts
        if previous is not None and event.ts - previous < cfg.window_s:
            return 0
    return cfg.channel_weights.get(event.channel, 1) if event.channel else 1


def parse_user_event(raw: bytes | None) -> Interaction | Tick:
    """A user-events record (ValueError for anything that is not an interaction or a mark)."""
    doc = json_object(raw)
    if is_tick(doc):
        return Tick.model_validate(doc)
    return Interaction.model_validate(doc)


def fold_batch(
    records: Sequence[InputRecord],
    *,
    partition: int,
    part: PartitionState,
    users: Callable[[str], bytes | None],
    catalogue: Catalogue,
    cfg: FoldConfig,
) -> Folded:
    """Fold a batch of one partition's interactions (no clock marks: the agent splits at them).

    ``users(user_id)`` gives a user's stored state bytes (None for a new user). ``part`` is
    updated in place; the returned writes make the tables say the same.
    """
    writes = TableWrites()
    states: dict[str, UserState] = {}
    last_event: dict[str, Interaction] = {}
    dead: list[tuple[str, InputRecord]] = []
    hits: list[OnlineHit] = []
    tr, co, active = part.trending, part.copurchase, part.active
    applied = part.applied

    def counted(key: bytes, offset: int) -> bool:
        return applied.get(key, -1) >= offset

    for rec in records:
        try:
            event = parse_user_event(rec.value)
            if isinstance(event, Tick):
                raise ValueError("a clock mark inside a fold batch")
        except ValueError as exc:  # user-events is internal; still never crash
            dead.append((f"invalid user event: {exc}", rec))
            continue
        user_id = event.user_id
        state = states.get(user_id)
        if state is None:
            raw = users(user_id)
            try:
                state = UserState.from_bytes(raw) if raw else UserState(user_id)
            except ValueError as exc:  # never expected: reported, the others go on
                dead.append((f"stored state of user {user_id!r} unreadable: {exc}", rec))
                continue
        if state.already_folded(rec.partition, rec.offset, event.event_id, event.ingested_from):
            continue
        if event.item_id not in catalogue:
            dead.append((f"unknown item_id {event.item_id!r}", rec))
            continue
        if cfg.copurchase and event.kind == "purchase":
            basket = state.same_day_basket(tr.bucket_of(event.ts), tr.bucket_of)
            if event.item_id not in basket:
                changed, dropped = co.add_basket_item(
                    event.item_id,
                    basket,
                    counted=lambda a, b, at=rec.offset: counted(
                        copurchase_key(partition, a, b), at
                    ),
                )
                for a, b in changed:
                    writes.copurchase[copurchase_key(partition, a, b)] = copurchase_value(
                        co.count(a, b), rec.offset
                    )
                for a, b in dropped:
                    writes.copurchase[copurchase_key(partition, a, b)] = None
        shown = state.last_list
        if shown is not None:
            rank = shown.rank_of(event.item_id)
            hits.append(
                OnlineHit(
                    shown.variant, shown.trigger, shown.strategy, event.kind, rank, len(shown.items)
                )
            )
        count = popularity_count(state, event, cfg)  # before the fold: needs the old state
        state.fold(
            item_id=event.item_id,
            kind=event.kind,
            ts=event.ts,
            config=cfg.decay,
            history_len=cfg.history_len,
            max_seen=cfg.max_seen,
            partition=rec.partition,
            offset=rec.offset,
            event_id=event.event_id,
            source=event.ingested_from,
        )
        states[user_id] = state
        last_event.pop(user_id, None)  # keep the users in the order of their newest events
        last_event[user_id] = event
        cell = trending_key(partition, tr.bucket_of(event.ts), event.item_id)
        if count and not counted(cell, rec.offset):
            bucket, expired = tr.add(event.item_id, event.kind, event.ts, count)
        else:  # counted in the window already: a repeat purchase, or before a crash
            bucket, expired = None, []
        if bucket is not None:
            writes.trending[cell] = trending_value(tr.counts(bucket, event.item_id), rec.offset)
        for old_bucket, item_id in expired:
            writes.trending[trending_key(partition, old_bucket, item_id)] = None
        if cfg.day_close:
            day = tr.bucket_of(event.ts)
            if tr.in_window(day) and active.add(partition, day, user_id):
                writes.active[active_key(partition, day, user_id)] = b"1"
            oldest = tr.oldest_bucket
            if oldest is not None:  # forget days no mark closed in time
                for old_day, old_user in active.expire(partition, oldest):
                    writes.active[active_key(partition, old_day, old_user)] = None
    writes.users = EncodedStates(states)
    if records:
        part.counted_through = max(part.counted_through, records[-1].offset)
    return Folded(
        partition=partition,
        states=states,
        last_event=last_event,
        writes=writes,
        dead=dead,
        as_of=part.counted_through if records else None,
        hits=hits,
    )


def rank_batch(
    folded: Folded,
    ranking: Ranking | RankContext,
    *,
    model_id: str,
    candidates: Mapping[str, Mapping[str, Candidates]] | Mapping[str, Candidates] | None = None,
) -> list[Recommendation]:
    """One recommendation per user of the batch (per variant ranking them), in the order of
    their newest events; each user's own list is kept in their state (``folded.writes.users``
    encodes the states when read).

    ``candidates`` (visual ranker): variant -> user -> the store's neighbours (a plain
    user -> neighbours mapping with a single context)."""
    if isinstance(ranking, RankContext):
        ranking, candidates = Ranking({"": ranking}), {"": candidates or {}}
    as_of = None if folded.as_of is None else (folded.partition, folded.as_of)
    out = []
    for ctx, users in ranking.groups(folded.last_event):
        variant = ctx.config.variant
        found = (candidates or {}).get(variant)
        ranked = rank_states({u: folded.states[u] for u in users}, ctx, found)  # type: ignore[arg-type]
        for user_id in users:
            event = folded.last_event[user_id]
            items, strategy = ranked[user_id]
            out.append(
                to_record(
                    user_id,
                    items,
                    strategy,
                    model_id=model_id,
                    event_id=event.event_id,
                    event_ts=event.ts,
                    as_of=as_of,
                    variant=variant,
                )
            )
    remember_lists(folded.states, out, ranking)  # folded.writes.users encodes them as they are
    return out


@dataclass
class DayClose:
    """One slice of a day close: the lists to publish and the table writes that follow."""

    recommendations: list[Recommendation]
    users: dict[bytes, bytes]  # states that now keep the list just published
    active: dict[bytes, None]  # the closed (day, user) cells, deleted


def close_days_slice(
    partition: int,
    closing: Mapping[str, Sequence[int]],
    states: Mapping[str, UserState],
    ranking: Ranking,
    *,
    tick_ts: float,
    as_of: int,
    model_id: str,
    candidates: Mapping[str, Mapping[str, Candidates]] | None = None,
) -> DayClose:
    """Re-rank the users of ``closing`` (user -> the closed day buckets they were active in)
    with the partition's final counts of those days; ``states``: their stored states (a user
    without one is only forgotten from the closed days). The caller discards the closed days
    from ``part.active`` once the lists are published (a crash before re-ranks again)."""
    recs: list[Recommendation] = []
    mine = {u: states[u] for u in closing if u in states}
    for ctx, users in ranking.groups(mine):
        variant = ctx.config.variant
        found = (candidates or {}).get(variant)
        ranked = rank_states({u: mine[u] for u in users}, ctx, found)  # type: ignore[arg-type]
        recs.extend(
            to_record(
                user_id,
                items,
                strategy,
                model_id=model_id,
                event_id=None,
                event_ts=tick_ts,
                trigger="day_close",
                as_of=(partition, as_of),
                variant=variant,
            )
            for user_id, (items, strategy) in ranked.items()
        )
    shown = remember_lists(mine, recs, ranking)  # the online metrics' reference
    return DayClose(
        recommendations=recs,
        users={u.encode(): mine[u].to_bytes() for u in sorted(shown)},
        active={active_key(partition, b, u): None for u in closing for b in closing[u]},
    )


def rank_context(part: PartitionState, catalogue: Catalogue, config: RankConfig) -> RankContext:
    return RankContext(
        config, trending=part.trending, copurchase=part.copurchase, catalogue=catalogue
    )


def ranking_for(
    part: PartitionState,
    catalogue: Catalogue,
    configs: Mapping[str, RankConfig],
    experiment: Experiment | None = None,
) -> Ranking:
    """The partition's rank contexts now, one per variant (``configs``: variant -> config)."""
    return Ranking.build(
        configs,
        experiment,
        trending=part.trending,
        copurchase=part.copurchase,
        catalogue=catalogue,
    )


@dataclass
class BatchResult:
    folded: Folded
    recommendations: list[Recommendation]


def process_batch(
    records: Sequence[InputRecord],
    *,
    partition: int,
    part: PartitionState,
    users: Callable[[str], bytes | None],
    catalogue: Catalogue,
    fold_cfg: FoldConfig,
    rank_cfg: RankConfig,
    model_id: str = "test",
    search: Callable[..., Candidates] | None = None,
    ranking: Ranking | None = None,
) -> BatchResult:
    """Fold and rank one batch synchronously; ``search(unit, limit, exclude)`` serves the
    visual ranker's store queries; ``ranking`` (built after the fold, from ``part``) ranks
    per experiment variant, else ``rank_cfg`` alone."""
    folded = fold_batch(
        records, partition=partition, part=part, users=users, catalogue=catalogue, cfg=fold_cfg
    )
    if ranking is None:
        ranking = Ranking({"": rank_context(part, catalogue, rank_cfg)})
    candidates: dict[str, dict[str, Candidates]] = {}
    for ctx, members in ranking.groups(folded.last_event):
        if ctx.config.ranker != "hybrid" and search is not None:
            mine = {u: folded.states[u] for u in members}
            candidates[ctx.config.variant] = {
                u: search(unit, 2 * ctx.config.k, exclude)
                for u, (unit, exclude) in visual_queries(mine, ctx).items()
            }
    return BatchResult(
        folded, rank_batch(folded, ranking, model_id=model_id, candidates=candidates)
    )
