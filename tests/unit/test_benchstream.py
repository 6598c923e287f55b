"""vrec_tools.benchstream: the synthetic shop stream and the benchmark's pure helpers."""

from __future__ import annotations

from collections import Counter

import pytest

from streams.events import Interaction
from vrec_tools.benchstream import (
    DAY,
    customer_baskets,
    due,
    hop_latencies,
    latencies,
    ms_percentiles,
    next_day_start,
    parse_vmrss,
    split_counts,
    synthetic_log,
)

T0 = 1_600_000_000.0


def _purchases() -> list[Interaction]:
    """Five real customers: baskets on one or more days, one item not in the catalogue."""
    rows = [
        ("c1", "a", 0, 1), ("c1", "b", 0, 1), ("c1", "c", 3, 2),
        ("c2", "d", 1, 2),
        ("c3", "a", 2, None), ("c3", "e", 2, None), ("c3", "x-gone", 5, 1),
        ("c4", "f", 4, 2), ("c4", "a", 9, 2), ("c4", "b", 9, 2),
        ("c5", "x-gone", 7, 1),
    ]  # fmt: skip
    return [
        Interaction(
            event_id=f"hm:{n}",
            user_id=c,
            item_id=item,
            ts=T0 + day * DAY + 12 * 3600,
            kind="purchase",
            channel=ch,
        )
        for n, (c, item, day, ch) in enumerate(rows)
    ]


CATALOGUE = {"a", "b", "c", "d", "e", "f"}


def test_customer_baskets_group_by_customer_and_day_and_drop_unknown_items():
    baskets = customer_baskets(_purchases(), CATALOGUE)
    assert baskets == [
        [[("a", 1), ("b", 1)], [("c", 2)]],
        [[("d", 2)]],
        [[("a", None), ("e", None)]],
        [[("f", 2)], [("a", 2), ("b", 2)]],
    ]  # c5 bought only an unknown item


def test_synthetic_log_counts_ids_and_catalogue():
    log = synthetic_log(_purchases(), 50, 7, seed=1, start_ts=T0, catalogue=CATALOGUE)
    assert len(log) == 50 * 7
    per_user = Counter(e.user_id for e in log)
    assert len(per_user) == 50 and set(per_user.values()) == {7}
    assert set(per_user) == {f"syn-{u:06d}" for u in range(50)}
    assert len({e.event_id for e in log}) == len(log)
    assert {e.item_id for e in log} <= CATALOGUE
    assert {e.kind for e in log} == {"view", "purchase"}
    assert all(e.channel is None for e in log if e.kind == "view")


def test_synthetic_log_is_deterministic_per_seed():
    a = synthetic_log(_purchases(), 20, 5, seed=3, start_ts=T0, catalogue=CATALOGUE)
    b = synthetic_log(_purchases(), 20, 5, seed=3, start_ts=T0, catalogue=CATALOGUE)
    c = synthetic_log(_purchases(), 20, 5, seed=4, start_ts=T0, catalogue=CATALOGUE)
    assert a == b
    assert a != c


def test_synthetic_log_chunks_are_the_same_users_as_one_call():
    whole = synthetic_log(_purchases(), 6, 4, seed=2, start_ts=T0, catalogue=CATALOGUE)
    part = synthetic_log(_purchases(), 3, 4, seed=2, start_ts=T0, catalogue=CATALOGUE, first_user=3)
    assert part == [e for e in whole if int(e.user_id.split("-")[1]) >= 3]


def test_synthetic_log_interleaves_users_in_time_order_within_the_span():
    days = 14.0
    log = synthetic_log(_purchases(), 40, 10, seed=0, start_ts=T0, days=days, catalogue=CATALOGUE)
    ts = [e.ts for e in log]
    assert ts == sorted(ts)
    assert ts[0] >= T0 and ts[-1] < T0 + days * DAY
    assert ts[-1] - ts[0] > 5 * DAY  # several days: trending window and day buckets move
    switches = sum(a.user_id != b.user_id for a, b in zip(log, log[1:]))
    assert switches > 3 * 40  # a shop's stream, not user after user
    for user in {e.user_id for e in log}:  # each user's own events in their order
        mine = [int(e.event_id.rsplit(":", 1)[1]) for e in log if e.user_id == user]
        assert mine == sorted(mine)


def test_synthetic_log_views_come_before_the_purchase_of_the_item():
    log = synthetic_log(_purchases(), 30, 12, seed=5, start_ts=T0, catalogue=CATALOGUE)
    for user in {e.user_id for e in log}:
        mine = [e for e in log if e.user_id == user]
        for i, e in enumerate(mine[:-1]):
            if e.kind == "view":
                nxt = mine[i + 1]
                assert nxt.kind == "purchase" and nxt.item_id == e.item_id
                assert 0 < nxt.ts - e.ts <= 900


def test_synthetic_log_without_views_keeps_real_channels():
    log = synthetic_log(
        _purchases(), 10, 6, seed=0, start_ts=T0, view_ratio=0.0, catalogue=CATALOGUE
    )
    assert {e.kind for e in log} == {"purchase"}
    real = {(e.item_id, e.channel) for e in _purchases()}
    assert {(e.item_id, e.channel) for e in log} <= real


def test_synthetic_log_needs_catalogue_purchases():
    with pytest.raises(ValueError):
        synthetic_log(_purchases(), 5, 5, catalogue={"nothing"})


def test_split_counts_and_pacing():
    assert split_counts(list(range(10)), [3, 4, 5]) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert due(1000, 0.0, 50) == 1  # the first event goes at once
    assert due(1000, 0.0105, 50) == 11
    assert due(1000, 5.0, 50) == 50
    assert due(1000, -1.0, 50) == 1


def test_next_day_start():
    assert next_day_start(T0) == (T0 // DAY + 1) * DAY
    assert next_day_start(10 * DAY) == 11 * DAY
    assert next_day_start(10 * DAY - 0.001) == 10 * DAY


def test_parse_vmrss():
    text = "Name:\tpython\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n"
    assert parse_vmrss(text) == 123456 * 1024
    with pytest.raises(ValueError):
        parse_vmrss("Name:\tpython\n")


def test_latencies_match_event_recommendations_once():
    sent = {"e1": 100.0, "e2": 100.5, "e3": 101.0}
    recs = [
        ("e1", 100.25, "event"),
        ("e1", 103.0, "event"),  # redelivered: the first answer counts
        ("e3", 101.5, "event"),  # e2 has no list of its own (same user, same micro-batch)
        (None, 110.0, "day_close"),
        ("other", 99.0, "event"),
    ]
    assert latencies(recs, sent) == [0.25, 0.5]
    assert ms_percentiles([0.25, 0.5]) == {"p50": 375.0, "p99": 497.5}
    assert ms_percentiles([]) == {}


def test_hop_latencies_split_each_answered_event_at_its_forward():
    sent = {"e1": 100.0, "e2": 100.5, "e3": 101.0}
    forwarded = {"e1": 100.1, "e2": 100.6, "e3": 101.2}
    recs = [
        ("e1", 100.25, "event"),
        ("e1", 103.0, "event"),  # redelivered: the first answer counts
        ("e3", 101.5, "event"),
        (None, 110.0, "day_close"),
    ]
    ingest, users = hop_latencies(recs, sent, forwarded)
    assert ingest == pytest.approx([0.1, 0.2])
    assert users == pytest.approx([0.15, 0.3])
    # each event's hops add up to its latency
    total = [a + b for a, b in zip(ingest, users)]
    assert total == pytest.approx(latencies(recs, sent))
    # an event without a forward record (not read back) is left out of both hops
    assert hop_latencies(recs, sent, {"e3": 101.2}) == (pytest.approx([0.2]), pytest.approx([0.3]))
