"""Clock marks close days: the users active in them are re-ranked with the final popularity.

Real broker and worker, the hybrid ranker on the recorded fixture (200 H&M products, 2,000
events over 26 days), on one and two partitions. The worker is restarted between the replay
and the mark, so the set of active users must come back from its changelog.
"""

from __future__ import annotations

import pytest

from streams.settings import REPO_ROOT, Settings, get_settings, isolated_run
from vrec_tools import cli
from vrec_tools.harness import Pipeline, settings_env
from vrec_tools.replay import read_hm_items, read_log

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"

pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("partitions", [1, 2])
def test_clock_mark_reranks_the_users_of_the_closed_days(
    kafka_broker, tmp_path, monkeypatch, partitions
):
    products = read_hm_items(SAMPLE / "items.csv")
    _, events = read_log(SAMPLE / "events.jsonl")
    settings = isolated_run(
        Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path),
        "test",
        ranker="hybrid",
        partitions=partitions,
    )
    day_s = settings.trending_bucket_s
    last_day = max(int(e.ts // day_s) for e in events)
    window = range(last_day - int(settings.trending_window_days) + 1, last_day + 1)
    in_window = {e.user_id for e in events if int(e.ts // day_s) in window}
    outside = {e.user_id for e in events} - in_window
    assert len(in_window) > 100 and outside, "the fixture has users on both sides"
    tick_ts = float((last_day + 1) * day_s)

    with Pipeline(settings) as pipe:
        pipe.index(products)
        pipe.replay(events)
        before = pipe.recommendations()
        # one list per user per micro-batch: at most one per event, at least one per user
        assert len({r.user_id for r in before}) == len({e.user_id for e in events})
        assert len(before) <= len(events) and all(r.trigger == "event" for r in before)
        pipe.restart()  # the active users must survive in their changelog-backed table
        pipe.close_days(tick_ts)
        after = pipe.recommendations()
        closed = [r for r in after if r.trigger == "day_close"]
        assert len(after) == len(before) + len(closed)

        # One re-ranked list per user active in the trending window, nobody else.
        assert all(r.trigger == "day_close" and r.event_id is None for r in closed)
        assert all(r.event_ts == tick_ts and r.strategy == "hybrid" for r in closed)
        users = [r.user_id for r in closed]
        assert len(users) == len(set(users)) and set(users) == in_window

        last_event = {r.user_id: r for r in before}
        # The user of the very last event: nothing changed since, so the same list and scores.
        final_user = events[-1].user_id
        got = {r.user_id: r for r in closed}[final_user]
        assert [(i.item_id, i.score) for i in got.items] == [
            (i.item_id, i.score) for i in last_event[final_user].items
        ]
        # Earlier users: ranked again with the popularity of the whole day.
        changed = [
            r.user_id
            for r in closed
            if [i.item_id for i in r.items] != [i.item_id for i in last_event[r.user_id].items]
        ]
        assert changed, "popularity moved during the day; some lists must change"

        # The mark is consumed: the same mark again (from `vrec tick`) re-ranks nobody.
        for name, value in settings_env(settings).items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        try:
            assert cli.main(["tick", str(int(tick_ts))]) == 0
        finally:
            get_settings.cache_clear()
        pipe.wait_drained()
        # both marks reached every user-events partition
        assert pipe.count("user_events") == len(events) + 2 * partitions
        assert len(pipe.recommendations()) == len(after)
        assert pipe.dead_letters() == []
