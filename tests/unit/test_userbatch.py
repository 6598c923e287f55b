"""streams.userbatch: the users agent's micro-batch logic without Kafka.

A small catalogue (6 items with random vectors, product codes and prices), batches of several
users' views and purchases with a repeated event id, a redelivered offset, an unknown item and
malformed records; the table writes applied to plain dicts stand in for the Faust tables.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from state_canon import canon

from streams.catalogue import Catalogue
from streams.ranking import Trending
from streams.ranking.copurchase import CoPurchase
from streams.recommend import RankConfig, rank_states
from streams.runtime import PartitionStates
from streams.settings import Settings
from streams.tables import (
    parse_active_key,
    parse_copurchase_key,
    parse_copurchase_value,
    parse_trending_key,
    parse_trending_value,
)
from streams.userbatch import (
    FoldConfig,
    InputRecord,
    PartitionState,
    TableWrites,
    fold_batch,
    popularity_count,
    process_batch,
    rank_batch,
    rank_context,
)
from streams.userstate import UserState, item_hash

DAY = 86_400.0
T0 = 100 * DAY  # day bucket 100
ITEMS = {  # item -> (product code, price)
    "i0": ("A", 0.02),
    "i1": ("A", 0.05),
    "i2": ("B", 0.01),
    "i3": ("B", 0.03),
    "i4": ("C", 0.04),
    "i5": ("D", 0.06),
}
PARTITION = 3


def _settings(**kw) -> Settings:
    base = dict(
        ranker="hybrid",
        top_k=4,
        personalise_after=1,
        exclude="none",
        history_len=10,
        max_seen=5,
        copurchase_neighbours=3,
        trending_bucket_s=86_400,
        trending_window_days=7.0,
        trending_channel_weights={1: 2},
        day_close_refresh=True,
    )
    base.update(kw)
    return Settings(**base)


def _catalogue(seed: int = 0) -> Catalogue:
    rng = np.random.default_rng(seed)
    cat = Catalogue()
    for item_id, (code, price) in ITEMS.items():
        cat.put(item_id, rng.normal(size=8), {"product_code": code, "price": price})
    return cat


def _part(s: Settings) -> PartitionState:
    return PartitionStates(s.popularity, s.users.kind_weights).get(PARTITION)


def _value(event_id, user_id, item_id, ts, kind="view", channel=None) -> bytes:
    doc = {"event_id": event_id, "user_id": user_id, "item_id": item_id, "ts": ts, "kind": kind}
    if channel is not None:
        doc["channel"] = channel
    return json.dumps(doc).encode()


class Tables:
    """Plain dicts standing in for the users, trending, co-purchase and active tables."""

    def __init__(self) -> None:
        self.users: dict[bytes, bytes] = {}
        self.trending: dict[bytes, bytes] = {}
        self.copurchase: dict[bytes, bytes] = {}
        self.active: dict[bytes, bytes] = {}

    def user(self, user_id: str) -> bytes | None:
        return self.users.get(user_id.encode())

    def apply(self, writes: TableWrites) -> None:
        for name in ("users", "trending", "copurchase", "active"):
            table = getattr(self, name)
            for key, value in getattr(writes, name).items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value

    def snapshot(self) -> dict[str, dict[bytes, bytes]]:
        return {n: dict(getattr(self, n)) for n in ("users", "trending", "copurchase", "active")}

    def folded(self) -> dict[str, dict[bytes, bytes]]:
        """The snapshot without the last list in each user state (one list is published per
        batch, so which list a user saw last depends on the batching)."""
        out = self.snapshot()
        for key, raw in out["users"].items():
            state = UserState.from_bytes(raw)
            state.last_list = None
            out["users"][key] = state.to_bytes()
        return out


def _part_view(part: PartitionState) -> tuple:
    """What the rankers read of a partition's shared state."""
    tr, co = part.trending, part.copurchase
    items = {i for _, i, _ in tr.cells()}
    return (
        tr.now_bucket,
        tr.top(1000),
        tr.max_score,
        {i: tr.score(i) for i in items},
        sorted((b, i, list(c)) for b, i, c in tr.cells()),
        sorted(co.cells()),
        sorted(part.active.cells()),
    )


# ---------------------------------------------------------------- one batch, by hand


def _records() -> list[InputRecord]:
    """Offsets 100..112 of one partition: four users, a repeated event id, a redelivered
    offset, a malformed record, an unknown item, a repeat purchase inside the window."""
    raw = [
        _value("e100", "u1", "i0", T0 + 10),
        _value("e101", "u2", "i1", T0 + 20, "purchase", channel=1),
        _value("e102", "u1", "i2", T0 + 30, "purchase"),
        _value("e103", "u1", "i3", T0 + 40, "purchase"),  # same day as i2: co-purchase
        _value("e104", "u3", "i4", T0 + 50),
        b'{"event_id": "e105", "user_id": "u3", "item_id"',  # malformed
        _value("e106", "u2", "ghost", T0 + 55),  # unknown item
        _value("dup", "u2", "i2", T0 + 60, "purchase", channel=2),
        _value("dup", "u2", "i2", T0 + 61, "purchase", channel=2),  # upstream retry
    ]
    records = [InputRecord(PARTITION, 100 + n, v) for n, v in enumerate(raw)]
    records.append(records[3])  # Kafka redelivers offset 103
    for n, v in enumerate(
        [
            _value("e109", "u4", "i5", T0 + DAY + 5, "purchase"),
            _value("e110", "u1", "i5", T0 + DAY + 10),
            _value("e111", "u4", "i1", T0 + DAY + 20),
            _value("e112", "u2", "i1", T0 + DAY + 30, "purchase"),  # repeat purchase of i1
        ]
    ):
        records.append(InputRecord(PARTITION, 109 + n, v))
    return records


def _process(records, s: Settings, tables: Tables, part: PartitionState, cat: Catalogue):
    result = process_batch(
        records,
        partition=PARTITION,
        part=part,
        users=tables.user,
        catalogue=cat,
        fold_cfg=FoldConfig.from_settings(s),
        rank_cfg=RankConfig.from_settings(s),
        model_id="m1",
    )
    tables.apply(result.folded.writes)
    return result


def test_process_batch_by_hand():
    s, cat = _settings(), _catalogue()
    tables, part = Tables(), _part(s)
    records = _records()
    result = _process(records, s, tables, part, cat)
    folded = result.folded

    # dead letters: the malformed record and the unknown item, with a reason
    assert [(reason.split(":")[0], rec.offset) for reason, rec in folded.dead] == [
        ("invalid user event", 105),
        ("unknown item_id 'ghost'", 106),
    ]
    assert folded.dead[0][1] is records[5] and folded.dead[1][1] is records[6]

    # states: the repeat (event id "dup") and the redelivered offset 103 were skipped
    states = folded.states
    assert set(states) == {"u1", "u2", "u3", "u4"}
    assert [(h.item_id, h.kind) for h in states["u1"].history] == [
        ("i0", "view"),
        ("i2", "purchase"),
        ("i3", "purchase"),
        ("i5", "view"),
    ]
    assert states["u1"].n_events == 4 and states["u1"].offsets == {PARTITION: 110}
    assert [h.item_id for h in states["u2"].history] == ["i1", "i2", "i1"]
    assert states["u2"].n_events == 3 and states["u2"].offsets == {PARTITION: 112}
    assert "ghost" not in states["u2"].items
    assert states["u3"].n_events == 1 and states["u4"].n_events == 2

    # one recommendation per user, for their last event folded, as of the batch's last offset
    recs = {r.user_id: r for r in result.recommendations}
    assert len(result.recommendations) == 4
    assert {u: r.event_id for u, r in recs.items()} == {
        "u1": "e110",
        "u2": "e112",
        "u3": "e104",
        "u4": "e111",
    }
    assert recs["u2"].event_ts == T0 + DAY + 30
    for r in result.recommendations:
        assert (r.as_of_partition, r.as_of_offset) == (PARTITION, 112)
        assert r.model_id == "m1" and r.trigger == "event" and r.strategy == "hybrid"
        assert len(r.items) == s.top_k
        assert len({i.item_id for i in r.items}) == s.top_k
        assert {i.item_id for i in r.items} <= set(ITEMS)
    assert folded.as_of == 112 and folded.partition == PARTITION

    # users table: the states' bytes, which decode back to the states
    assert set(folded.writes.users) == {b"u1", b"u2", b"u3", b"u4"}
    for key, raw in folded.writes.users.items():
        assert canon(UserState.from_bytes(raw)) == canon(states[key.decode()])

    # trending table: one cell per (day, item), counts per kind (purchase, view) and the offset
    # of the last record counted; u2's store purchase (channel 1) counts 2, u2's repeat
    # purchase of i1 inside the window 0 (no write)
    tr = part.trending
    assert tr.kinds == ("purchase", "view")
    trending = {
        parse_trending_key(k): parse_trending_value(v) for k, v in folded.writes.trending.items()
    }
    assert trending == {
        (PARTITION, 100, "i0"): ([0, 1], 100),
        (PARTITION, 100, "i1"): ([2, 0], 101),
        (PARTITION, 100, "i2"): ([2, 0], 107),
        (PARTITION, 100, "i3"): ([1, 0], 103),
        (PARTITION, 100, "i4"): ([0, 1], 104),
        (PARTITION, 101, "i5"): ([1, 1], 110),
        (PARTITION, 101, "i1"): ([0, 1], 111),
    }
    assert all(tr.counts(b, i) == c for (_, b, i), (c, _) in trending.items())

    # co-purchase table: u1's i2 and i3 share day 100, so do u2's i1 and i2; u4's i5 and
    # u2's second i1 (day 101) have no basket partner
    co = {
        parse_copurchase_key(k): parse_copurchase_value(v)
        for k, v in folded.writes.copurchase.items()
    }
    assert co == {
        (PARTITION, "i3", "i2"): (1, 103),
        (PARTITION, "i2", "i3"): (1, 103),
        (PARTITION, "i2", "i1"): (1, 107),
        (PARTITION, "i1", "i2"): (1, 107),
    }
    assert sorted(part.copurchase.cells()) == sorted((a, b, c) for (_, a, b), (c, _) in co.items())

    # active days, for the day close
    active = {parse_active_key(k) for k in folded.writes.active}
    assert active == {
        (PARTITION, 100, "u1"),
        (PARTITION, 100, "u2"),
        (PARTITION, 100, "u3"),
        (PARTITION, 101, "u4"),
        (PARTITION, 101, "u1"),
        (PARTITION, 101, "u2"),
    }
    assert set(folded.writes.active.values()) == {b"1"}

    # the tables rebuild the same partition state (what a restarted worker reads back)
    restored = PartitionStates(s.popularity, s.users.kind_weights)
    restored.load(tables.trending, tables.copurchase, tables.active)
    assert _part_view(restored.get(PARTITION)) == _part_view(part)


def test_redelivered_batch_changes_nothing():
    s, cat = _settings(), _catalogue()
    tables, part = Tables(), _part(s)
    _process(_records(), s, tables, part, cat)
    before_tables, before_part = tables.snapshot(), _part_view(part)
    again = _process(_records(), s, tables, part, cat)
    assert again.recommendations == []
    assert again.folded.states == {}
    assert len(again.folded.writes) == 0
    # the malformed record is refused again; the unknown item's offset is behind u2's mark
    assert [r.offset for _, r in again.folded.dead] == [105]
    assert tables.snapshot() == before_tables
    assert _part_view(part) == before_part


def test_dead_letters_change_nothing_else():
    s, cat = _settings(), _catalogue()
    bad = [
        InputRecord(PARTITION, 1, b"not json"),
        InputRecord(PARTITION, 2, b"[1, 2]"),
        InputRecord(PARTITION, 3, b'{"kind": "tick", "ts": 5}'),  # marks are split off earlier
        InputRecord(PARTITION, 4, b'{"event_id": "e", "user_id": "u", "ts": 1}'),  # no item
        InputRecord(PARTITION, 5, _value("e5", "u", "ghost", T0)),
        InputRecord(PARTITION, 6, _value("e6", "u", "i0", float("nan"))),
        InputRecord(PARTITION, 7, b"\xff\xfe"),
    ]
    tables, part = Tables(), _part(s)
    result = _process(bad, s, tables, part, cat)
    assert [r.offset for _, r in result.folded.dead] == [1, 2, 3, 4, 5, 6, 7]
    assert all(reason for reason, _ in result.folded.dead)
    assert "clock mark" in result.folded.dead[2][0]
    assert result.recommendations == [] and result.folded.states == {}
    assert len(result.folded.writes) == 0
    assert _part_view(part) == _part_view(_part(s))
    assert result.folded.as_of == 7  # the batch is still consumed through its last record


def test_empty_batch():
    s = _settings()
    result = _process([], s, Tables(), _part(s), _catalogue())
    assert result.recommendations == [] and result.folded.as_of is None


def test_popularity_count_distinct_buyers_and_channels():
    from streams.events import Interaction

    s = _settings()
    cfg = FoldConfig.from_settings(s)
    state = UserState("u")
    buy = Interaction(event_id="e", user_id="u", item_id="i0", ts=T0, kind="purchase", channel=1)
    assert popularity_count(state, buy, cfg) == 2
    state.fold(item_id="i0", kind="purchase", ts=T0, config=cfg.decay)
    assert popularity_count(state, buy.model_copy(update={"ts": T0 + DAY}), cfg) == 0
    later = buy.model_copy(update={"ts": T0 + 7 * DAY, "channel": 2})
    assert popularity_count(state, later, cfg) == 1  # outside the window: counts again
    view = Interaction(event_id="v", user_id="u", item_id="i0", ts=T0 + 1)
    assert popularity_count(state, view, cfg) == 1
    no_distinct = FoldConfig.from_settings(_settings(trending_distinct_buyers=False))
    assert popularity_count(state, buy, no_distinct) == 2


def test_visual_ranker_batch_uses_search_for_personal_users():
    s = _settings(ranker="visual")
    cat = _catalogue()
    calls = []

    def search(unit, limit, exclude):
        calls.append((unit, limit, exclude))
        return [(i, cat.vector(i)) for i in sorted(ITEMS) if i not in exclude][:limit]

    fold_cfg = FoldConfig.from_settings(s)
    assert not fold_cfg.copurchase  # co-purchase counts are kept for the hybrid ranker only
    part = _part(s)
    result = process_batch(
        _records(),
        partition=PARTITION,
        part=part,
        users=Tables().user,
        catalogue=cat,
        fold_cfg=fold_cfg,
        rank_cfg=RankConfig.from_settings(s),
        search=search,
    )
    assert len(calls) == 4 and all(limit == 2 * s.top_k for _, limit, _ in calls)
    assert {r.strategy for r in result.recommendations} == {"visual"}
    assert result.folded.writes.copurchase == {} and list(part.copurchase.cells()) == []


# ---------------------------------------------------------------- one batch vs smaller batches


def _run_in_batches(records, cuts, s: Settings, cat: Catalogue):
    """Fold (and rank) ``records`` split at ``cuts``; returns tables, partition state, the
    recommendations of each batch and the dead letters."""
    tables, part = Tables(), _part(s)
    fold_cfg, rank_cfg = FoldConfig.from_settings(s), RankConfig.from_settings(s)
    bounds = [0, *sorted(set(cuts)), len(records)]
    recs, dead = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        if lo == hi:
            continue
        result = process_batch(
            records[lo:hi],
            partition=PARTITION,
            part=part,
            users=tables.user,
            catalogue=cat,
            fold_cfg=fold_cfg,
            rank_cfg=rank_cfg,
        )
        tables.apply(result.folded.writes)
        recs.append(result.recommendations)
        dead.extend((reason, r.offset) for reason, r in result.folded.dead)
    return tables, part, recs, dead


@pytest.mark.parametrize("cuts", [[3], [1, 5, 9], list(range(1, 13))])
def test_one_batch_equals_smaller_batches(cuts):
    s, cat = _settings(), _catalogue()
    records = _records()
    one_tables, one_part, (one_recs,), one_dead = _run_in_batches(records, [], s, cat)
    tables, part, recs, dead = _run_in_batches(records, cuts, s, cat)
    # the same final user states (byte for byte, but for the last list each keeps), partition
    # state and tables
    assert tables.folded() == one_tables.folded()
    # each state keeps the last list published to its user
    last_rec = {r.user_id: r for batch in recs for r in batch}
    for key, raw in tables.users.items():
        shown = UserState.from_bytes(raw).last_list
        rec = last_rec[key.decode()]
        assert shown is not None and shown.items == tuple(item_hash(i.item_id) for i in rec.items)
        assert (shown.trigger, shown.strategy, shown.variant) == ("event", rec.strategy, "")
    assert _part_view(part) == _part_view(one_part)
    assert dead == one_dead
    # the lists differ only by their as-of point: each user's final state ranked against the
    # final partition state gives the single batch's list
    states = {k.decode(): UserState.from_bytes(v) for k, v in tables.users.items()}
    final = rank_states(states, rank_context(part, cat, RankConfig.from_settings(s)))
    for rec in one_recs:
        items, strategy = final[rec.user_id]
        assert [(i.item_id, i.reason) for i in rec.items] == [(x.item_id, x.reason) for x in items]
        assert [i.score for i in rec.items] == pytest.approx([x.score for x in items], rel=1e-6)
        assert rec.strategy == strategy
    # the last batch's users were ranked at the same point as in the single batch (scores to
    # float32 precision: the head cosines are one matrix product over the batch's users, whose
    # last bits depend on how many users it has)
    last = {r.user_id: r for r in recs[-1]}
    for rec in one_recs:
        if rec.user_id in last:
            got = last[rec.user_id]
            assert [(i.item_id, i.reason) for i in got.items] == [
                (i.item_id, i.reason) for i in rec.items
            ]
            assert [i.score for i in got.items] == pytest.approx(
                [i.score for i in rec.items], rel=1e-6
            )
            assert got.as_of_offset == rec.as_of_offset
    # every user gets one list per batch they had an event folded in, for their last event
    assert sorted(r.user_id for r in one_recs) == sorted({r.user_id for b in recs for r in b})


# ---------------------------------------------------------------- property

USERS = ["u0", "u1", "ü2"]
CAT_ITEMS = sorted(ITEMS)


@st.composite
def batches(draw):
    records: list[InputRecord] = []
    clock = T0
    offset = 0
    for _ in range(draw(st.integers(1, 30))):
        what = draw(st.sampled_from(["event"] * 6 + ["repeat-id", "redeliver", "bad", "ghost"]))
        if what == "redeliver" and records:
            records.append(draw(st.sampled_from(records)))  # same offset, same value
            continue
        clock += draw(st.sampled_from([0.0, 10.0, 1000.0, DAY / 2, 3 * DAY]))
        ts = clock - draw(st.sampled_from([0.0, 0.0, 500.0, DAY, 9 * DAY]))  # late, too late
        user = draw(st.sampled_from(USERS))
        item = "ghost" if what == "ghost" else draw(st.sampled_from(CAT_ITEMS))
        kind = draw(st.sampled_from(["view", "purchase"]))
        event_id = f"e{offset}"
        if what == "repeat-id" and records:
            event_id = draw(st.sampled_from([f"e{n}" for n in range(offset)]))
        value = (
            b'{"event_id": "x"'
            if what == "bad"
            else _value(event_id, user, item, ts, kind, draw(st.sampled_from([None, 1, 2])))
        )
        records.append(InputRecord(PARTITION, offset, value))
        offset += 1
    cuts = draw(st.lists(st.integers(1, max(1, len(records) - 1)), max_size=4))
    return records, cuts


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(batches())
def test_folding_in_batches_equals_one_batch(scenario):
    records, cuts = scenario
    s = _settings(max_seen=3, history_len=4, copurchase_neighbours=2, trending_window_days=2.0)
    cat = _catalogue()
    one_tables, one_part, _, one_dead = _run_in_batches(records, [], s, cat)
    tables, part, _, dead = _run_in_batches(records, cuts, s, cat)
    assert tables.folded() == one_tables.folded()
    assert _part_view(part) == _part_view(one_part)
    assert dead == one_dead
    restored = PartitionStates(s.popularity, s.users.kind_weights)
    restored.load(tables.trending, tables.copurchase, tables.active)
    assert _part_view(restored.get(PARTITION)) == _part_view(part)


def test_partition_state_defaults():
    s = _settings(copurchase_neighbours=7)
    part = _part(s)
    assert isinstance(part.trending, Trending) and isinstance(part.copurchase, CoPurchase)
    assert part.copurchase.max_neighbours == 7
    assert part.trending.n_buckets == 7


# ---------------------------------------------------------------- bugs found in review (fixed)


def test_item_id_over_255_utf8_bytes_does_not_break_the_batch():
    from streams.events import Interaction, ProductUpload

    long_id = "日" * 86  # 86 characters, 258 UTF-8 bytes
    ProductUpload(item_id=long_id, image_path="x.jpg")  # valid upload
    Interaction(event_id="e", user_id="u", item_id=long_id, ts=T0)  # valid interaction
    s = _settings()
    cat = _catalogue()
    cat.put(long_id, np.ones(8), {})
    records = [
        InputRecord(PARTITION, 0, _value("e0", "u1", long_id, T0)),
        InputRecord(PARTITION, 1, _value("e1", "u2", "i0", T0)),
    ]
    folded = fold_batch(
        records,
        partition=PARTITION,
        part=_part(s),
        users=Tables().user,
        catalogue=cat,
        cfg=FoldConfig.from_settings(s),
    )
    assert "u2" in folded.states and b"u2" in folded.writes.users


def test_recommendations_in_the_order_of_the_users_newest_events():
    s = _settings()
    records = [
        InputRecord(PARTITION, 0, _value("e0", "u1", "i0", T0)),
        InputRecord(PARTITION, 1, _value("e1", "u2", "i1", T0 + 1)),
        InputRecord(PARTITION, 2, _value("e2", "u1", "i2", T0 + 2)),
    ]
    result = _process(records, s, Tables(), _part(s), _catalogue())
    assert [(r.user_id, r.event_id) for r in result.recommendations] == [
        ("u2", "e1"),
        ("u1", "e2"),
    ]


# ---------------------------------------------------------------- a crash between the writes


def _restored(s: Settings, tables: Tables) -> PartitionState:
    """The partition state a restarted worker rebuilds from the tables."""
    states = PartitionStates(s.popularity, s.users.kind_weights)
    states.load(tables.trending, tables.copurchase, tables.active)
    return states.get(PARTITION)


def _subset(writes: dict, keep: list[bool]) -> dict:
    return {k: v for (k, v), kept in zip(writes.items(), keep + [False] * len(writes)) if kept}


def _two_batches_then_crash(s: Settings, cat: Catalogue):
    """The sample records as two batches: (the second batch's records, the tables, partition
    state and second-batch recommendations of an uninterrupted run, and a second run's tables
    and partition state after the first batch, with the second batch folded but not written)."""
    records = _records()
    first, second = records[:7], records[7:]
    whole, whole_part = Tables(), _part(s)
    _process(first, s, whole, whole_part, cat)
    whole_recs = _process(second, s, whole, whole_part, cat).recommendations
    tables, part = Tables(), _part(s)
    _process(first, s, tables, part, cat)
    folded = fold_batch(
        second,
        partition=PARTITION,
        part=part,
        users=tables.user,
        catalogue=cat,
        cfg=FoldConfig.from_settings(s),
    )
    return second, (whole, whole_part, whole_recs), (tables, part, folded)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_crash_between_the_writes_counts_nothing_twice(data):
    """The worker dies after the broker took any subset of a batch's shared cells (no user
    state: the agent sends those once every shared cell is acked), or all shared cells and any
    subset of the user states. The redelivered batch, folded over the tables as they are, ends
    in the tables and partition state of an uninterrupted run."""
    s, cat = _settings(), _catalogue()
    second, (whole, whole_part, _), (tables, part, folded) = _two_batches_then_crash(s, cat)
    rank_batch(folded, rank_context(part, cat, RankConfig.from_settings(s)), model_id="test")
    crashed = folded.writes
    shared = [
        ("trending", crashed.trending),
        ("copurchase", crashed.copurchase),
        ("active", crashed.active),
    ]
    all_shared = data.draw(st.booleans(), label="all shared cells acked")
    for name, writes in shared:
        keep = (
            [True] * len(writes)
            if all_shared
            else data.draw(
                st.lists(st.booleans(), min_size=len(writes), max_size=len(writes)), label=name
            )
        )
        getattr(tables, name).update(_subset(writes, keep))
        for k in [k for k, v in _subset(writes, keep).items() if v is None]:
            getattr(tables, name).pop(k)
    if all_shared:
        keep = data.draw(
            st.lists(st.booleans(), min_size=len(crashed.users), max_size=len(crashed.users)),
            label="users",
        )
        tables.users.update(_subset(crashed.users, keep))

    restarted = _restored(s, tables)
    _process(second, s, tables, restarted, cat)  # Kafka redelivers the batch
    assert tables.snapshot() == whole.snapshot()
    assert _part_view(restarted) == _part_view(whole_part)


def test_a_redelivered_batch_cut_shorter_is_published_as_of_the_restored_counts():
    """The worker dies after every shared cell of a batch reached the broker and before any of
    its user states; Kafka redelivers the batch cut shorter. The counts restored from the
    tables are those after the whole batch, so the shorter batch's lists are published as of
    the newest offset counted in them (not the shorter batch's end), and a user whose events
    all lie in the shorter batch gets the list of the uninterrupted run."""
    s, cat = _settings(), _catalogue()
    second, (whole, _, whole_recs), (tables, _, folded) = _two_batches_then_crash(s, cat)
    straight = {r.user_id: r for r in whole_recs}
    for name in ("trending", "copurchase", "active"):
        tables.apply(TableWrites(**{name: getattr(folded.writes, name)}))
    restarted = _restored(s, tables)
    newest_cell = max(restarted.applied.values())
    assert restarted.counted_through == newest_cell > second[4].offset

    shorter = _process(second[:5], s, tables, restarted, cat).recommendations  # ends at e110
    assert {r.as_of_offset for r in shorter} == {newest_cell}
    u1 = next(r for r in shorter if r.user_id == "u1")  # e110 is u1's newest event
    assert [(i.item_id, i.score) for i in u1.items] == [
        (i.item_id, i.score) for i in straight["u1"].items
    ]
    rest = _process(second[5:], s, tables, restarted, cat).recommendations
    assert {r.as_of_offset for r in rest} == {second[-1].offset}
    assert tables.folded() == whole.folded()


def _with_source(raw: bytes, position: tuple[int, int, int]) -> bytes:
    return json.dumps({**json.loads(raw), "ingested_from": list(position)}).encode()


def test_events_forwarded_again_after_a_crash_are_folded_once():
    """The ingest agent forwards a burst again with new user-events offsets (its source
    offsets were not committed): more events than the event-id memory holds; each source
    position is folded once, in every table."""
    s, cat = _settings(history_len=10), _catalogue()
    burst = [
        _with_source(_value(f"b{n}", "heavy", f"i{n % 6}", T0 + n, "purchase"), (1, 0, 500 + n))
        for n in range(150)
    ]
    records = [InputRecord(PARTITION, n, v) for n, v in enumerate(burst)]
    tables, part = Tables(), _part(s)
    _process(records, s, tables, part, cat)
    once = tables.snapshot()
    assert UserState.from_bytes(tables.users[b"heavy"]).n_events == 150
    again = [InputRecord(PARTITION, 150 + n, v) for n, v in enumerate(burst[40:])]
    result = _process(again, s, tables, part, cat)
    assert result.folded.states == {} and result.recommendations == []
    assert tables.snapshot() == once
    # a new event from the same source partition (a later offset) is folded
    new = _with_source(_value("b150", "heavy", "i1", T0 + 150), (1, 0, 650))
    _process([InputRecord(PARTITION, 300, new)], s, tables, part, cat)
    assert UserState.from_bytes(tables.users[b"heavy"]).n_events == 151
