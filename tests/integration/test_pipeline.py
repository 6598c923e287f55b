"""The walking skeleton end to end: real Kafka, a real worker process, real weights and images.

A recorded fixture log (200 real H&M products, 2,000 events) is replayed through the running
worker; every published recommendation must equal the independent numpy reference in
tests/reference.py computed over the same embeddings and the same event order.
"""

from __future__ import annotations

import base64
import json
import signal
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from reference import (
    RefConfig,
    expected_recommendations,
    folded_events,
    trending_list,
    user_vector,
)

from streams.events import Recommendation
from streams.harness import Pipeline
from streams.replay import read_hm_items, read_log
from streams.settings import REPO_ROOT, Settings, isolated_run

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def sample():
    products = read_hm_items(SAMPLE / "items.csv")
    _, events = read_log(SAMPLE / "events.jsonl")
    assert len(products) == 200 and len(events) == 2000
    return products, events


def make_settings(tmp_path: Path, bootstrap: str, **overrides) -> Settings:
    return isolated_run(
        Settings(broker=bootstrap, data_dir=tmp_path),
        "test",
        **{"personalise_after": 2, "ranker": "visual", "exclude": "purchased", **overrides},
    )


def processing_order(user_events) -> list[dict]:
    """Events as the worker folded them: user-events in (partition, offset) order."""
    return [json.loads(r.value) for r in sorted(user_events, key=lambda r: (r.partition, r.offset))]


def check_against_reference(pipe: Pipeline, settings: Settings, sent_ids: set[str]) -> dict:
    """Every sent event has exactly one recommendation, equal to the reference."""
    recs = pipe.recommendations()
    user_events = pipe.read("user_events", idle=1.0, timeout=60)
    embeddings = {i: e.vector for i, e in pipe.embeddings().items()}
    expected = expected_recommendations(user_events, embeddings, RefConfig.of(settings))

    by_event = defaultdict(list)
    for r in recs:
        by_event[r.event_id].append(r)
    assert set(by_event) == sent_ids, "one recommendation per event"
    assert all(len(v) == 1 for v in by_event.values()), "no duplicates without a restart"
    assert set(expected) == sent_ids
    mismatches = []
    for eid, exp in expected.items():
        got = by_event[eid][0]
        ids = [it.item_id for it in got.items]
        if got.strategy != exp.strategy or ids != [i for i, _ in exp.items]:
            mismatches.append((eid, got.strategy, exp.strategy, ids[:5], exp.items[:5]))
            continue
        scores = np.array([it.score for it in got.items])
        want = np.array([s for _, s in exp.items])
        assert np.max(np.abs(scores - want), initial=0.0) <= 1e-4, eid
    assert not mismatches, f"{len(mismatches)} recommendations differ, e.g. {mismatches[:3]}"
    return {"recs": recs, "expected": expected, "user_events": user_events}


def test_replay_matches_reference(kafka_broker, tmp_path, sample):
    products, events = sample
    settings = make_settings(tmp_path, kafka_broker.bootstrap, exclude="purchased")
    with Pipeline(settings) as pipe:
        pipe.index(products)
        assert len(pipe.embeddings()) == len(products)
        pipe.replay(events)
        out = check_against_reference(pipe, settings, {e.event_id for e in events})
        assert pipe.dead_letters() == []
        # The trending list for users not seen yet is published (to the trending topic) and
        # ends equal to the reference over all events.
        newest = max(e.ts for e in events)
        last_trending = []

        def settled() -> bool:
            recs = pipe.read("trending", idle=0.5, timeout=10)
            last_trending[:] = [Recommendation.from_bytes(r.value) for r in recs[-1:]]
            return bool(last_trending) and last_trending[0].event_ts == newest

        pipe.wait_until("the final trending list", settled, timeout=60)
        want = trending_list(processing_order(out["user_events"]), RefConfig.of(settings))
        got = last_trending[0]
        assert got.user_id == "*" and got.strategy == "trending"
        assert [(i.item_id, i.score) for i in got.items] == want

    recs: list[Recommendation] = out["recs"]
    # Visual lists are full; a trending list is short only while the stream has few items in it.
    assert all(len(r.items) == settings.top_k for r in recs if r.strategy == "visual")
    assert all(1 <= len(r.items) <= settings.top_k for r in recs)
    assert sum(len(r.items) == settings.top_k for r in recs if r.strategy == "trending") > 300
    assert {r.model_id for r in recs} == {recs[0].model_id}
    assert recs[0].model_id.startswith("efficientnet_lite0-")
    # Walk the events in the order the worker folded them (the user-events partition order).
    bought: dict[str, set[str]] = defaultdict(set)
    by_id = {r.event_id: r for r in recs}
    cold = 0
    for e in processing_order(out["user_events"]):
        rec = by_id[e["event_id"]]
        if e["user_id"] not in bought:  # a user's first event: cold, gets the trending list
            cold += 1
            assert rec.strategy == "trending"
            assert all(it.reason == "trending" for it in rec.items)
        else:
            assert rec.strategy == "visual"
        if e["kind"] == "purchase":
            bought[e["user_id"]].add(e["item_id"])
        else:
            bought.setdefault(e["user_id"], set())
        # Purchased items are excluded: no list names an item the user bought up to this event.
        assert not bought[e["user_id"]] & {it.item_id for it in rec.items}
    assert cold == len({e.user_id for e in events})
    # The visual strategy really is personal: warm users do not all get the same list.
    warm_lists = {tuple(i.item_id for i in r.items) for r in recs if r.strategy == "visual"}
    assert len(warm_lists) > 100


def test_seen_policy_excludes_views_too(kafka_broker, tmp_path, sample):
    products, events = sample
    events = events[:600]
    settings = make_settings(tmp_path, kafka_broker.bootstrap, exclude="seen")
    with Pipeline(settings) as pipe:
        pipe.index(products)
        pipe.replay(events)
        out = check_against_reference(pipe, settings, {e.event_id for e in events})
    seen: dict[str, set[str]] = defaultdict(set)
    by_id = {r.event_id: r for r in out["recs"]}
    n_views = 0
    for e in processing_order(out["user_events"]):
        seen[e["user_id"]].add(e["item_id"])
        n_views += e["kind"] == "view"
        assert not seen[e["user_id"]] & {it.item_id for it in by_id[e["event_id"]].items}
    assert n_views > 50


def _final_state(pipe: Pipeline, settings: Settings):
    """The user table as its changelog says (last value per key) and the last rec per user."""
    changelog = f"{settings.app_id}-users-changelog"
    records = pipe.read_raw(changelog, idle=1.5, timeout=60)
    table = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        table[r.key.decode()] = None if r.value is None else json.loads(r.value)
    last = {}
    for r in pipe.recommendation_records():
        rec = Recommendation.from_bytes(r.value)
        last[rec.user_id] = rec
    return table, last


def _vector(state: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(state["acc"]), "<f8") / state["wsum"]


@pytest.mark.parametrize(
    ("sig", "store"),
    # See README "Delivery guarantees": exactly_once, and RocksDB tables after a SIGKILL, lost
    # updates in our runs with faust-streaming 0.15.3, so they are not what vrec relies on.
    [(signal.SIGTERM, "rocksdb://"), (signal.SIGKILL, "memory://")],
    ids=["sigterm-rocksdb", "sigkill-memory"],
)
def test_restart_mid_replay_gives_same_final_state(kafka_broker, tmp_path, sample, sig, store):
    """Stop the worker mid-replay, start it again: the final user table and each user's last
    recommendation are those of an uninterrupted worker.

    The order in which a worker interleaves the views and purchases topics is not fixed, so the
    comparison with a separate uninterrupted run covers what does not depend on that order
    (event counts, seen/purchased sets, the decayed mean vector); the order-dependent parts
    (history order, last recommendation) are compared with the reference worker computed over
    the interrupted run's own user-events order.
    """
    products, events = sample
    ids = {e.event_id for e in events}

    straight = make_settings(tmp_path, kafka_broker.bootstrap, table_store=store)
    with Pipeline(straight) as pipe:
        pipe.index(products)
        pipe.replay(events)
        table_a, _ = _final_state(pipe, straight)

    interrupted = make_settings(tmp_path, kafka_broker.bootstrap, table_store=store)
    with Pipeline(interrupted) as pipe:
        pipe.index(products)
        assert pipe.replayer is not None
        pipe.replayer.send_events(events)  # all in; the worker is still busy with them
        pipe.wait_for_recommendations(len(events) // 4)
        pipe.restart(sig)
        processed_before = pipe.count("recommendations")
        assert processed_before < len(events) * 0.9, "stop must land in the middle of the replay"
        pipe.wait_until(
            "all events processed after the restart",
            lambda: {r.event_id for r in pipe.recommendations()} >= ids,
        )
        table_b, last_b = _final_state(pipe, interrupted)
        user_events = pipe.read("user_events", idle=1.0, timeout=60)
        embeddings = {i: e.vector for i, e in pipe.embeddings().items()}

    cfg = RefConfig.of(interrupted)
    folded = folded_events(user_events)
    expected = expected_recommendations(user_events, embeddings, cfg)
    assert sum(s["n_events"] for s in table_b.values()) == len(events)
    assert set(table_a) == set(table_b) == set(folded)
    for user, b in table_b.items():
        a = table_a[user]
        assert a["n_events"] == b["n_events"] == len(folded[user]), user
        for field in ("seen", "purchased"):
            assert set(a[field]) == set(b[field]), (user, field)
        assert sorted(h[3] for h in a["history"]) == sorted(h[3] for h in b["history"]), user
        assert np.allclose(_vector(a), _vector(b), atol=1e-9), user
        # order-dependent parts: as the reference worker folds this run's user-events
        assert [h[3] for h in b["history"]] == [e["event_id"] for e in folded[user]][-50:], user
        ref_vec = user_vector(
            [(e["item_id"], e["kind"], e["ts"]) for e in folded[user]], embeddings, cfg
        )
        assert np.allclose(_vector(b), ref_vec, atol=1e-6), user
        rec = last_b[user]
        assert rec.event_id == folded[user][-1]["event_id"], user
        want = expected[rec.event_id]
        assert [i.item_id for i in rec.items] == [i for i, _ in want.items], user
        assert np.allclose([i.score for i in rec.items], [s for _, s in want.items], atol=1e-4)
