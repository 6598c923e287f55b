"""`vrec eval` end to end on the fixture: real broker, real worker, real images.

The report's metrics must equal an independent computation over the lists vrec published
(read back from the recommendations and trending topics), and the predictions must be exactly
those lists.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import pytest

from streams.events import Recommendation
from streams.settings import REPO_ROOT, Settings, TopicNames, get_settings
from vrec_tools.eval import cli as eval_cli
from vrec_tools.replay import read_log, read_topic, write_jsonl

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"

pytestmark = pytest.mark.timeout(900)


def _apk(actual: set[str], predicted: list[str], k: int = 12) -> float:
    hits, score, seen = 0, 0.0, set()
    for i, p in enumerate(predicted[:k]):
        if p in actual and p not in seen:
            hits += 1
            score += hits / (i + 1)
        seen.add(p)
    return score / min(len(actual), k) if actual else 0.0


def test_eval_report_matches_published_lists(kafka_broker, tmp_path, monkeypatch):
    _, events = read_log(SAMPLE / "events.jsonl")
    cut = sorted({e.ts for e in events})[-4]  # the last days are the truth period
    history = [e for e in events if e.ts < cut]
    truth_events = [e for e in events if e.ts >= cut and e.kind == "purchase"]
    hist_path, truth_path = tmp_path / "history.jsonl", tmp_path / "truth.jsonl"
    write_jsonl(hist_path, history)
    write_jsonl(truth_path, truth_events)
    truth: dict[str, set[str]] = defaultdict(set)
    for e in truth_events:
        truth[e.user_id].add(e.item_id)
    warm = {e.user_id for e in history} & set(truth)
    assert len(truth) > 20 and 0 < len(warm) < len(truth)

    monkeypatch.setenv("VREC_BROKER", kafka_broker.bootstrap)
    monkeypatch.setenv("VREC_DATA_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    out = tmp_path / "report.json"
    try:
        rc = eval_cli.main(
            [
                "--items",
                str(SAMPLE / "items.csv"),
                "--history",
                str(hist_path),
                "--truth",
                str(truth_path),
                "--k",
                "12",
                "--out",
                str(out),
                "--set",
                "embedding_cache=" + str(tmp_path / "emb.sqlite"),
                "--no-progress",
            ]
        )
    finally:
        get_settings.cache_clear()
    assert rc == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    for name in ("map", "hr", "recall", "ndcg"):
        assert 0.0 <= m[f"{name}_all"] <= 1.0 and 0.0 <= m[f"{name}_warm"] <= 1.0
    assert m["users"] == len(truth) and m["warm_users"] == len(warm)
    assert report["method"] == "live:hybrid" and report["history_events"] == len(history)
    assert report["latency_ms_p50"] > 0 and report["latency_ms_p99"] >= report["latency_ms_p50"]
    assert 0 < m["coverage"] <= 1
    assert out.with_suffix(".md").read_text().startswith("# vrec eval")
    assert out.with_suffix(".png").stat().st_size > 1000

    # The predictions are what vrec published: last list per user, else the trending list.
    with open(out.with_suffix(".predictions.csv")) as f:
        predictions = {r["customer_id"]: r["prediction"].split() for r in csv.DictReader(f)}
    settings = Settings(
        broker=kafka_broker.bootstrap, topics=TopicNames(prefix=report["topic_prefix"])
    )
    last, trigger = {}, {}
    for r in read_topic(settings, "recommendations", idle=2.0, timeout=60):
        rec = Recommendation.from_bytes(r.value)
        last[rec.user_id] = [i.item_id for i in rec.items]
        trigger[rec.user_id] = rec.trigger
    # The history's last day was closed: its users' final lists were re-ranked after it.
    last_day = max(e.ts for e in history) // 86_400
    last_day_users = {e.user_id for e in history if e.ts // 86_400 == last_day}
    assert last_day_users and all(trigger[u] == "day_close" for u in last_day_users)
    assert report["timings_s"]["day_close_s"] >= 0
    trending = Recommendation.from_bytes(read_topic(settings, "trending", idle=2.0)[-1].value)
    assert set(predictions) == set(truth)
    for user, items in predictions.items():
        assert items == last.get(user, [i.item_id for i in trending.items]), user
    assert {u for u in truth if u in last} == warm

    # The metrics equal an independent computation over those lists.
    map_all = sum(_apk(truth[u], predictions[u]) for u in truth) / len(truth)
    map_warm = sum(_apk(truth[u], predictions[u]) for u in warm) / len(warm)
    assert m["map_all"] == pytest.approx(map_all, abs=1e-12)
    assert m["map_warm"] == pytest.approx(map_warm, abs=1e-12)
    hr_all = sum(bool(truth[u] & set(predictions[u][:12])) for u in truth) / len(truth)
    assert m["hr_all"] == pytest.approx(hr_all, abs=1e-12)

    # `--baseline live`: the users agent's logic in-process (streams/offline.py). A list made
    # by the day close is ranked at the final state, whatever the batch boundaries were, so
    # those customers get exactly the live worker's lists.
    live_out = tmp_path / "live.json"
    try:
        rc = eval_cli.main(
            ["--items", str(SAMPLE / "items.csv"), "--history", str(hist_path), "--truth"]
            + [str(truth_path), "--out", str(live_out), "--baseline", "live", "--no-progress"]
            + ["--set", "embedding_cache=" + str(tmp_path / "emb.sqlite")]
        )
    finally:
        get_settings.cache_clear()
    assert rc == 0 and json.loads(live_out.read_text())["method"] == "offline:live-core"
    with open(live_out.with_suffix(".predictions.csv")) as f:
        offline = {r["customer_id"]: r["prediction"].split() for r in csv.DictReader(f)}
    closed = [u for u in truth if trigger.get(u) == "day_close"]
    assert closed and all(offline[u] == predictions[u] for u in closed)
