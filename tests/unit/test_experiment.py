"""A/B/n assignment, online scoring in the fold and its recount over the published lists."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_userbatch import ITEMS, PARTITION, Tables, _catalogue, _part, _records, _settings

from streams.experiment import Experiment, Variant, variant_settings
from streams.recommend import variant_configs
from streams.userbatch import FoldConfig, process_batch, ranking_for
from vrec_tools.eval.online import paired_difference, score_events, summarise, wilson

IDS = [f"user-{n}" for n in range(100_000)]


def test_assignment_follows_the_shares_and_is_stable():
    exp = Experiment("salt-1", (Variant("A", 0.5), Variant("B", 0.3), Variant("C", 0.2)))
    got = [exp.assign(u) for u in IDS]
    for name, share in (("A", 0.5), ("B", 0.3), ("C", 0.2)):
        assert got.count(name) / len(IDS) == pytest.approx(share, abs=0.006)
    assert got == [exp.assign(u) for u in IDS]  # stable
    # new shares: only users whose point left their variant's interval move
    moved = Experiment("salt-1", (Variant("A", 0.4), Variant("B", 0.4), Variant("C", 0.2)))
    after = [moved.assign(u) for u in IDS]
    changed = [(a, b) for a, b in zip(got, after) if a != b]
    assert {c for c in changed} == {("A", "B")}
    assert len(changed) / len(IDS) == pytest.approx(0.1, abs=0.006)
    # another salt reshuffles
    other = Experiment("salt-2", exp.variants)
    same = sum(a == other.assign(u) for a, u in zip(got, IDS)) / len(IDS)
    assert same == pytest.approx(0.5 * 0.5 + 0.3 * 0.3 + 0.2 * 0.2, abs=0.01)


def test_parse_and_refuse():
    exp = Experiment.parse(
        json.dumps(
            {"salt": "s", "variants": [{"name": "A"}, {"name": "B", "set": {"w_visual": 0}}]}
        )
    )
    assert exp.names == ["A", "B"]
    per = variant_settings(_settings(), exp)
    assert per["A"].w_visual == 0.5 and per["B"].w_visual == 0.0
    with pytest.raises(ValueError, match="cannot differ per variant"):
        Experiment.parse('{"variants": [{"name": "A", "set": {"half_life_days": 3}}]}')
    with pytest.raises(ValueError, match="must differ"):
        Experiment.parse('{"variants": [{"name": "A"}, {"name": "A"}]}')
    with pytest.raises(ValueError):
        Experiment.parse("{not json")
    with pytest.raises(ValueError):  # a wrong type fails when the settings are built
        variant_settings(
            _settings(), Experiment.parse('{"variants": [{"name": "A", "set": {"top_k": "many"}}]}')
        )


def _run(records, cuts, s, experiment):
    """Fold and rank in batches; returns every OnlineHit and every published list."""
    tables, part, cat = Tables(), _part(s), _catalogue()
    configs = variant_configs(s, experiment)
    bounds = [0, *cuts, len(records)]
    hits, recs = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        result = process_batch(
            records[lo:hi],
            partition=PARTITION,
            part=part,
            users=tables.user,
            catalogue=cat,
            fold_cfg=FoldConfig.from_settings(s),
            rank_cfg=configs[next(iter(configs))],
            ranking=ranking_for(part, cat, configs, experiment),
        )
        tables.apply(result.folded.writes)
        hits.extend(result.folded.hits)
        recs.extend(result.recommendations)
    return hits, recs, cat


@pytest.mark.parametrize("shadow", [False, True])
def test_online_hits_equal_the_recount_over_the_published_lists(shadow):
    s = _settings()
    exp = Experiment("s", (Variant("A", 0.5), Variant("B", 0.5, {"w_visual": 0.0})), shadow)
    records = _records()
    hits, recs, cat = _run(records, [2, 4, 8, 10, 11], s, exp)
    assert hits, "users with several batches are scored"
    assert {r.variant for r in recs} == (
        {"A", "B"} if shadow else {exp.assign(r.user_id) for r in recs}
    )
    user_events = [
        SimpleNamespace(partition=r.partition, offset=r.offset, value=r.value) for r in records
    ]
    recount = score_events(user_events, recs, known=set(ITEMS), own=exp.assign)
    assert [(h.variant, h.trigger, h.strategy, h.kind, h.rank, h.k) for h in hits] == [
        (x.variant, x.trigger, x.strategy, x.kind, x.rank, x.k) for x in recount
    ]
    if shadow:  # every variant scored on the same events: paired
        both = score_events(user_events, recs, known=set(ITEMS))
        assert len(both) == 2 * len(recount)
        diff = paired_difference(both, "A", "B", n_boot=200)
        assert diff["events"] == len(recount)


def test_wilson_and_summary():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 0) == (0.0, 0.0)
    from vrec_tools.eval.online import ScoredEvent

    rows = [
        ScoredEvent("u", f"e{n}", 0.0, "view", "A", "event", "hybrid", n % 3, 12) for n in range(9)
    ]
    out = summarise(rows)[("A",)]
    assert out["events"] == 9 and out["hits"] == 6
    assert out["mrr"] == pytest.approx((3 * 1.0 + 3 * 0.5) / 9)
