"""Variants and online metrics through the real pipeline.

Two variants split the sample's users; after a replay with a day close in the middle, the
worker's ``vrec_online_*`` counters (scraped from ``/metrics``) equal an offline recount over the
``recommendations`` topic and the ``user-events`` log, per variant, trigger, strategy and kind.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import pytest
from pydantic import SecretStr
from test_pipeline import catalogue
from test_web import Http, wait_for

from streams.experiment import Experiment
from streams.settings import Settings, isolated_run
from vrec_tools.broker import find_free_port
from vrec_tools.eval.online import score_events
from vrec_tools.eval.report import counter_table, markdown, parse_counters
from vrec_tools.harness import Pipeline

pytestmark = pytest.mark.timeout(900)
DAY = 86_400.0
VARIANTS = {
    "salt": "test",
    "variants": [
        {"name": "A", "share": 0.5},
        {"name": "B", "share": 0.5, "set": {"w_visual": 0.0, "w_popularity": 0.6}},
    ],
}


def scrape(client: Http) -> dict[tuple, dict[str, float]]:
    """(variant, trigger, strategy, kind) -> events, hits at k, rr sum of the worker."""
    status, _, body = client.request("GET", "/metrics")
    assert status == 200
    return parse_counters(body.decode())


def test_online_counters_equal_the_recount_per_variant(kafka_broker, tmp_path, sample):
    products, events = sample
    settings = isolated_run(
        Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path),
        "online",
        variants=json.dumps(VARIANTS),
        web_enabled=True,
        web_port=find_free_port(),
        web_token=SecretStr("t"),
    )
    exp = Experiment.parse(settings.variants)
    client = Http(settings.web_port, "t")
    half = len(events) // 2
    with Pipeline(settings) as pipe:
        wait_for("the web server", lambda: client.request("GET", "/health")[0] == 200, 180)
        pipe.index(products)
        pipe.replay(events[:half])
        pipe.close_days((events[half - 1].ts // DAY + 1) * DAY)  # day-close lists, then more
        pipe.replay(events[half:])
        time.sleep(1.0)
        counters = scrape(client)
        recs = pipe.recommendations()
        user_events = pipe.read("user_events", idle=1.0, timeout=60)
        embeddings, _ = catalogue(pipe)
        user = recs[-1].user_id
        status, _, body = client.request("GET", f"/users/{user}/recommendations")
        assert status == 200 and json.loads(body)["variant"] == exp.assign(user)

    assert {r.variant for r in recs} == {"A", "B"}
    assert all(r.variant == exp.assign(r.user_id) for r in recs)
    recount: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in score_events(user_events, recs, known=set(embeddings), own=exp.assign):
        c = recount[(s.variant, s.trigger, s.strategy, s.kind)]
        c["events"] += 1
        if s.rank:
            c["rr"] += 1.0 / s.rank
            c["rr_squared"] += 1.0 / s.rank**2
            c["hits@k"] += 1
            for at in (1, 5, 10):
                c[f"hits@{at}"] += s.rank <= at
    assert {k[0] for k in recount} == {"A", "B"}
    assert {k[1] for k in recount} == {"event", "day_close"}, "day-close lists are scored too"
    assert sum(c["hits@k"] for c in recount.values()) > 0
    assert set(counters) == set(recount)
    table = counter_table(counters, ["variant"])  # what `vrec report --metrics` prints
    assert [r["variant"] for r in table] == ["A", "B"]
    assert [r["events"] for r in table] == [
        sum(c["events"] for k, c in recount.items() if k[0] == v) for v in ("A", "B")
    ]
    for r in table:
        lo, hi = r["hit@k_ci"]
        assert lo <= r["hit@k"] <= hi and hi - lo > 0
    print(markdown(table, ["variant"]))
    for key, want in recount.items():
        got = counters[key]
        for name in ("events", "hits@1", "hits@5", "hits@10", "hits@k"):
            assert got[name] == want[name], (key, name, got[name], want[name])
        for name in ("rr", "rr_squared"):
            assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), (key, name)
