"""Crash campaign: SIGKILL the worker at random points of a replay with heavy users, again and
again; every table and each user's last recommendation must be those of an uninterrupted run.

Heavy users send bursts of 150 consecutive events (more than a user state remembers event ids
of), so a burst that the ingest agent forwards again after a kill (its source offsets were not
committed) is only recognised by its source positions; a kill between the shared cells and the
user states of a batch is only survived by the offsets in the cells (streams/tables.py).

CI runs the short form (``VREC_CRASH_KILLS``, default 3 kills); ``pytest -m crash`` selects it
alone, e.g. ``VREC_CRASH_KILLS=20 pytest -m crash`` for a longer campaign.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import numpy as np
import pytest
from reference import RefConfig, check_recommendations, folded_events
from test_pipeline import _final_state, catalogue, make_settings, progress

from streams.events import Interaction
from streams.tables import (
    parse_active_key,
    parse_copurchase_key,
    parse_copurchase_value,
    parse_trending_key,
    parse_trending_value,
)
from vrec_tools.harness import Pipeline

pytestmark = [pytest.mark.crash, pytest.mark.timeout(1800)]

DAY = 86_400.0
KILLS = int(os.environ.get("VREC_CRASH_KILLS", "3"))


def heavy_log(products, events: list[Interaction], n_heavy: int = 8, burst: int = 150):
    """The sample log with ``n_heavy`` bursts of ``burst`` consecutive events by one user each
    (views and purchases of random sample items, at the time of the event they follow)."""
    rng = random.Random(7)
    items = [p.item_id for p in products]
    out = list(events)
    for h in range(n_heavy):
        at = rng.randrange(len(out))
        t0 = out[at].ts
        bursts = [
            Interaction(
                event_id=f"heavy{h}:{n}",
                user_id=f"heavy-user-{h}",
                item_id=rng.choice(items),
                ts=t0 + n,
                kind="purchase" if n % 3 == 0 else "view",
            )
            for n in range(burst)
        ]
        out[at + 1 : at + 1] = bursts
    return out


def shared_tables(pipe: Pipeline, app_id: str) -> dict[str, dict]:
    """The trending, co-purchase and active tables as their changelogs say (last value per key),
    without the offsets the cells carry (those differ with the user-events order)."""
    out: dict[str, dict] = {}
    for name in ("trending", "copurchase", "active"):
        table: dict = {}
        records = pipe.read_raw(f"{app_id}-{name}-changelog", idle=1.5, timeout=60)
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            table[r.key] = r.value
        live = {k: v for k, v in table.items() if v is not None}
        if name == "trending":
            out[name] = {parse_trending_key(k): parse_trending_value(v)[0] for k, v in live.items()}
        elif name == "copurchase":
            out[name] = {
                parse_copurchase_key(k): parse_copurchase_value(v)[0] for k, v in live.items()
            }
        else:
            out[name] = {parse_active_key(k) for k in live}
    return out


def test_repeated_sigkills_change_no_table(kafka_broker, tmp_path, sample):
    products, base = sample
    events = heavy_log(products, base)
    ids = {e.event_id for e in events}
    overrides = dict(ranker="hybrid", exclude="none", personalise_after=1)

    straight = make_settings(tmp_path, kafka_broker.bootstrap, **overrides)
    with Pipeline(straight) as pipe:
        pipe.index(products)
        pipe.replay(events)
        users_a, _ = _final_state(pipe, straight, catalogue(pipe)[0])
        shared_a = shared_tables(pipe, straight.app_id)

    rng = random.Random(int(os.environ.get("VREC_CRASH_SEED", "11")))
    crashed = make_settings(tmp_path, kafka_broker.bootstrap, **overrides)
    kills = 0
    # the log in KILLS + 1 parts: each part is sent, the worker is killed while it folds it
    # (a fast worker may finish a part before the signal lands), and the next part comes
    # while the worker starts again
    bounds = [len(events) * n // (KILLS + 1) for n in range(KILLS + 2)]
    with Pipeline(crashed) as pipe:
        pipe.index(products)
        assert pipe.replayer is not None
        for n in range(KILLS + 1):
            before = progress(pipe)
            pipe.replayer.send_events(events[bounds[n] : bounds[n + 1]])
            if n == KILLS:
                break
            pipe.wait_until(f"part {n + 1} being folded", lambda b=before: progress(pipe) > b)
            time.sleep(rng.uniform(0.0, 0.3))
            pipe.restart(signal.SIGKILL)
            kills += 1
        pipe.wait_drained()
        embeddings, payloads = catalogue(pipe)
        users_b, last_b = _final_state(pipe, crashed, embeddings)
        shared_b = shared_tables(pipe, crashed.app_id)
        user_events = pipe.read("user_events", idle=1.0, timeout=60)

    assert kills == KILLS
    forwarded = Counter(r.value for r in user_events)
    print(
        f"crash campaign: {kills} SIGKILLs; {len(user_events)} user-events records for "
        f"{len(events)} events ({sum(c - 1 for c in forwarded.values())} forwarded again)"
    )
    folded = folded_events(user_events, embeddings)
    assert {e["event_id"] for evs in folded.values() for e in evs} == ids
    # users: counts, sets and the decayed mean vector equal the uninterrupted run's; the recent
    # history (which events are the last 50 depends on how the worker interleaved the views
    # and purchases topics) is this run's user-events order, each event once
    assert set(users_a) == set(users_b) == set(folded)
    assert sum(u["n_events"] for u in users_b.values()) == len(events)
    for user, b in users_b.items():
        a = users_a[user]
        assert a["n_events"] == b["n_events"] == len(folded[user]), user
        for field in ("seen", "purchased"):
            assert a[field] == b[field], (user, field)
        assert np.allclose(a["vector"], b["vector"], atol=1e-9), user
        ids_b = [b["history_key"](e["event_id"]) for e in folded[user]]
        assert b["history"] == ids_b[-crashed.history_len :], user
    heavy = [u for u in users_b if u.startswith("heavy-user-")]
    assert len(heavy) == 8 and all(users_b[u]["n_events"] >= 150 for u in heavy)
    # the shared tables: every trending count, co-purchase count and active day
    for name in ("trending", "copurchase", "active"):
        a, b = shared_a[name], shared_b[name]
        diff = (
            sorted(set(a) ^ set(b))[:5]
            if isinstance(a, set)
            else [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        )
        assert not diff, f"{name} differs from the uninterrupted run: {diff[:5]}"
    # each user's last recommendation: the reference as of the offset it was computed at
    mismatches = check_recommendations(
        list(last_b.values()), user_events, embeddings, payloads, RefConfig.of(crashed)
    )
    assert not mismatches, f"{len(mismatches)} last recommendations differ: {mismatches[:3]}"
