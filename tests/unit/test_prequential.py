"""Prequential scoring by hand: which list each event is scored against."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from streams.events import Interaction, RecItem, Recommendation
from vrec_tools.eval.online import paired_difference, score_events
from vrec_tools.eval.prequential import prequential_report


def _event(offset, user, item, eid, kind="purchase", partition=0):
    doc = {"event_id": eid, "user_id": user, "item_id": item, "ts": 1000.0 + offset, "kind": kind}
    return SimpleNamespace(partition=partition, offset=offset, value=json.dumps(doc).encode())


def _list(user, items, as_of, variant=None, trigger="event", partition=0):
    return Recommendation(
        user_id=user,
        items=[RecItem(item_id=i, score=1.0, reason="visual") for i in items],
        model_id="m",
        as_of_partition=partition,
        as_of_offset=as_of,
        variant=variant,
        trigger=trigger,
        strategy="hybrid",
    )


def test_each_event_meets_the_newest_earlier_list_of_its_user():
    events = [
        _event(0, "u", "a", "e0"),  # no list yet: not scored
        _event(1, "v", "x", "e1"),
        _event(2, "u", "b", "e2"),  # list as of 0: [b, c] -> rank 1
        _event(3, "u", "c", "e3"),  # still the list as of 0 (the one as of 3 is after it)
        _event(4, "u", "z", "e4"),  # list as of 3: [c, a] -> miss
        _event(5, "u", "z", "e4"),  # a repeat of e4: not scored
        _event(6, "v", "y", "e6"),  # v's day-close list as of 5: [q, y] -> rank 2
        _event(7, "u", "ghost", "e7"),  # unknown item: not scored
        SimpleNamespace(partition=0, offset=8, value=b'{"kind": "tick", "ts": 5}'),
    ]
    recs = [
        _list("u", ["b", "c"], 0),
        _list("v", ["q"], 1),
        _list("u", ["c", "a"], 3),
        _list("v", ["q", "y"], 5, trigger="day_close"),
        _list("u", ["z"], 9),  # after every event
        _list("w", ["a"], None),  # no as-of point (made elsewhere): ignored
    ]
    got = [
        (s.event_id, s.rank, s.k, s.trigger)
        for s in score_events(events, recs, known={"a", "b", "c", "x", "y", "z", "q"})
    ]
    assert got == [
        ("e2", 1, 2, "event"),
        ("e3", 2, 2, "event"),
        ("e4", 0, 2, "event"),
        ("e6", 2, 2, "day_close"),
    ]


def test_shadow_lists_are_paired_by_event():
    events = [_event(n, "u", item, f"e{n}") for n, item in enumerate("abcd")]
    recs = []
    for n in range(4):
        recs.append(_list("u", ["a", "b", "c", "d"][n + 1 :] or ["z"], n, variant="A"))
        recs.append(_list("u", ["z"], n, variant="B"))
    scored = score_events(events, recs, known=set("abcdz"))
    # A's list always starts with the next event's item; B's never holds it
    assert [(s.variant, s.rank) for s in scored] == [("A", 1), ("B", 0)] * 3
    d = paired_difference(scored, "A", "B", "hit", n_boot=100)
    assert d["events"] == 3 and d["users"] == 1 and d["diff"] == pytest.approx(-1.0)
    truth = [Interaction(event_id=f"e{n}", user_id="u", item_id="abcd"[n], ts=0) for n in (2, 3)]
    vectors = {i: [1.0, float(n)] for n, i in enumerate("abcdz")}
    report = prequential_report(recs, events, vectors, truth, ["A", "B"], k=12)
    assert report["variants"]["A"]["events_scored"] == 2  # e2 and e3, both hits
    assert report["variants"]["A"]["hit@12"] == 1.0 and report["variants"]["B"]["hit@12"] == 0
    assert report["paired"]["B - A"]["hit"]["diff"] == pytest.approx(-1.0)


def test_batch_metrics_per_variant_with_intervals():
    from vrec_tools.eval.metrics import bootstrap_ci, by_variant

    truth = {f"u{n}": {"a"} for n in range(40)}
    predictions = {f"u{n}": (["a"] if n % 2 == 0 else ["b"]) for n in range(40)}
    out = by_variant(
        predictions, truth, {"u0", "u1"}, lambda u: "even" if int(u[1:]) % 2 == 0 else "odd"
    )
    assert out["even"]["map_all"] == 1.0 and out["odd"]["map_all"] == 0.0
    assert out["even"]["map_all_ci"] == (1.0, 1.0) and out["odd"]["users"] == 20
    assert out["even"]["warm_users"] == 1
    lo, hi = bootstrap_ci([0.0, 1.0] * 50)
    assert lo < 0.5 < hi and hi - lo < 0.25
