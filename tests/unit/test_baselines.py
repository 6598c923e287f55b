"""Offline baselines and the dev split on tiny hand-made event logs (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest

from vrec_tools.eval.baselines import (
    BASELINES,
    LIVE_ABLATIONS,
    co_counts,
    itemcf,
    popularity,
    popularity_counts,
    popularity_ranking,
    repurchase,
    visual,
)
from vrec_tools.eval.data import (
    Events,
    catalogue_prices,
    day_number,
    dev_split,
    load_events,
    load_items,
)

CUT = "2020-01-10"


def ev(*rows: tuple[str, str, str], items: list[str] | None = None) -> Events:
    """rows: (day-of-January, customer, article); src_row = position."""
    return Events.from_records([(f"2020-01-{d}", c, a) for d, c, a in rows], items=items)


# ------------------------------------------------------------------------------- dev split


def test_dev_split_boundaries() -> None:
    e = ev(
        ("09", "h", "a1"),  # history only
        ("09", "w", "a1"),  # warm: history + truth
        ("10", "w", "a2"),  # first truth day (== cutoff)
        ("12", "w", "a3"),  # last truth day (== end)
        ("12", "w", "a3"),  # repeat: sets
        ("12", "c", "a4"),  # cold: truth only
        ("13", "late", "a5"),  # after end: nowhere
        ("13", "w", "a6"),
    )
    history, truth, warm = dev_split(e, cutoff=CUT, end="2020-01-12")
    assert len(history) == 2
    assert (history.day < day_number(CUT)).all()
    assert truth == {"w": {"a2", "a3"}, "c": {"a4"}}
    assert warm == {"w"}
    with pytest.raises(ValueError):
        dev_split(e, cutoff=CUT, end="2020-01-09")


def test_events_replay_order_and_codes() -> None:
    e = Events.from_records(
        [("2020-01-02", "u", "b"), ("2020-01-01", "v", "a"), ("2020-01-02", "u", "a")],
        items=["z", "a"],
    )
    assert e.items.tolist() == ["z", "a", "b"]  # given vocabulary first, then new articles
    assert e.day.tolist() == [day_number("2020-01-01")] + [day_number("2020-01-02")] * 2
    assert e.src_row.tolist() == [1, 0, 2]
    assert [r[2] for r in e.rows()] == ["a", "b", "a"]


def test_load_csv_keeps_leading_zero(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "items.csv").write_text(
        "article_id,product_code,product_type_name,image_path\n"
        "0108775015,108775,Vest top,images/010/0108775015.jpg\n"
        "0108775044,108775,Vest top,images/010/0108775044.jpg\n"
    )
    (tmp_path / "events.csv").write_text(
        "event_type,t_dat,customer_id,article_id,price,sales_channel_id,source,src_row\n"
        "purchase,2020-09-16,c2,0108775044,0.02,2,s,5\n"
        "purchase,2020-09-16,c1,0108775015,0.01,1,s,3\n"
        "purchase,2020-09-15,c1,0108775044,0.02,2,s,9\n"
    )
    items = load_items(tmp_path)
    assert items.article_id.tolist() == ["0108775015", "0108775044"]
    assert items.product_code.tolist() == [108775, 108775]
    e = load_events(tmp_path)
    assert e.items.tolist() == ["0108775015", "0108775044"]  # catalogue order = codes
    # replay order (t_dat, src_row): 09-15 row 9, then 09-16 rows 3 and 5
    assert list(e.rows()) == [
        ("2020-09-15", "c1", "0108775044"),
        ("2020-09-16", "c1", "0108775015"),
        ("2020-09-16", "c2", "0108775044"),
    ]
    assert e.src_row.tolist() == [9, 3, 5]


# ------------------------------------------------------------------------------ popularity


def _pop_log() -> Events:
    rows = [("01", f"p{n}", "P") for n in range(5)]  # age 9: outside a 7-day window
    rows += [("05", f"q{n}", "Q") for n in range(3)]  # age 5
    rows += [("09", "r0", "R"), ("09", "r1", "R"), ("08", "s0", "S")]
    rows += [("10", f"f{n}", "F") for n in range(9)]  # on the cutoff day: the future
    return ev(*rows)


def test_popularity_window() -> None:
    e = _pop_log()
    p7 = popularity(e, ["x", "y"], 7, cutoff=CUT)
    assert p7 == {"x": ["Q", "R", "S"], "y": ["Q", "R", "S"]}  # F is after the cutoff
    p14 = popularity(e, ["x"], 14, cutoff=CUT)
    assert p14["x"] == ["P", "Q", "R", "S"]
    assert popularity(e, ["x"], 1, cutoff=CUT)["x"] == ["R"]
    assert popularity(e, ["x"], 14, cutoff=CUT, k=2)["x"] == ["P", "Q"]


def test_popularity_tie_break_prefers_later_sale() -> None:
    e = ev(("03", "a", "OLD"), ("03", "b", "OLD"), ("08", "c", "NEW"), ("08", "d", "NEW"))
    codes = popularity_ranking(e, 7, CUT)
    assert [e.items[i] for i in codes] == ["NEW", "OLD"]


def test_popularity_unique_customers_and_channel_weights() -> None:
    rows = [("2020-01-09", "bulk", "B", 2)] * 4  # one online customer buys B four times
    rows += [("2020-01-09", f"s{n}", "S", 1) for n in range(2)]  # two store customers buy S
    rows += [("2020-01-09", f"o{n}", "O", 2) for n in range(3)]  # three online customers buy O
    e = Events.from_records(rows)
    code = e.item_index()
    b, s_, o = code["B"], code["S"], code["O"]
    counts = popularity_counts(e, 7, CUT)
    assert (counts[b], counts[s_], counts[o]) == (4, 2, 3)
    uniq = popularity_counts(e, 7, CUT, unique_customers=True)
    assert (uniq[b], uniq[s_], uniq[o]) == (1, 2, 3)
    store2 = popularity_counts(e, 7, CUT, unique_customers=True, channel_weights={1: 2.0})
    assert (store2[b], store2[s_], store2[o]) == (1, 4, 3)
    assert popularity(e, ["x"], 7, cutoff=CUT)["x"] == ["B", "O", "S"]
    assert popularity(e, ["x"], 7, unique_customers=True, cutoff=CUT)["x"] == ["O", "S", "B"]
    weighted = popularity(e, ["x"], 7, unique_customers=True, channel_weights={1: 2}, cutoff=CUT)
    assert weighted["x"] == ["S", "O", "B"]


# ------------------------------------------------------------------------------ repurchase


def _rep_log() -> Events:
    return ev(
        ("02", "c1", "A"),
        ("02", "c1", "A"),
        ("03", "c1", "C"),
        ("08", "c1", "B"),
        ("08", "c1", "C"),
        ("09", "z", "POP"),
        ("09", "y", "POP"),
        ("09", "y", "POP2"),
    )


def test_repurchase_recent_ordering_and_fill() -> None:
    preds = repurchase(_rep_log(), ["c1", "cold"], cutoff=CUT, k=5)
    # last day desc (C, B on 01-08; C bought twice wins), then A; then popular fill.
    assert preds["c1"] == ["C", "B", "A", "POP", "POP2"]
    # 7-day window (A's purchases are 8 days old): POP 2 and C 2 (POP sold later),
    # then POP2 1 and B 1 (POP2 sold later); only 4 items were sold in the window.
    assert preds["cold"] == ["POP", "C", "POP2", "B"]


def test_repurchase_frequent_ordering_and_age_limit() -> None:
    e = _rep_log()
    assert repurchase(e, ["c1"], order="frequent", cutoff=CUT, k=3)["c1"] == ["C", "A", "B"]
    recent_only = repurchase(e, ["c1"], max_age_days=3, cutoff=CUT, k=3)["c1"]
    assert recent_only == ["C", "B", "POP"]  # A (age 8) dropped
    with pytest.raises(ValueError):
        repurchase(e, ["c1"], order="nope")


# ---------------------------------------------------------------------------------- itemcf


def _cf_log() -> Events:
    return ev(
        ("04", "c2", "X"),
        ("04", "c2", "Y"),
        ("04", "c2", "Y"),  # repeated in the basket: counts once
        ("04", "c2", "Z"),
        ("04", "c3", "X"),
        ("04", "c3", "Y"),
        ("06", "c3", "X"),
        ("06", "c3", "Z"),
        ("05", "c5", "X"),
        ("05", "c5", "Y"),
        ("09", "c4", "X"),
        ("09", "c9", "W"),
    )


def test_co_counts_same_day() -> None:
    e = _cf_log()
    code = e.item_index()
    co = co_counts(e)
    x, y, z, w = code["X"], code["Y"], code["Z"], code["W"]
    assert co.get(x, y) == co.get(y, x) == 3  # baskets c2/04, c3/04, c5/05
    assert co.get(x, z) == 2  # c2/04, c3/06
    assert co.get(y, z) == 1  # c2/04 only (c3's Y and Z are on different days)
    assert co.get(x, x) == 0
    assert co.get(w, x) == 0


def test_co_counts_window() -> None:
    e = _cf_log()
    code = e.item_index()
    y, z, x = code["Y"], code["Z"], code["X"]
    assert co_counts(e, window_days=7).get(y, z) == 2  # c3: Y on 04, Z on 06 now pairs
    assert co_counts(e, window_days=1).get(y, z) == 1
    assert co_counts(e, window_days=7).get(x, z) == 2  # c3 counted once for X-Z


def test_itemcf_recommends_co_purchased_items() -> None:
    preds = itemcf(_cf_log(), ["c4", "cold"], cutoff=CUT, k=3)
    assert preds["c4"][:2] == ["Y", "Z"]  # co(X,Y)=3 > co(X,Z)=2; X itself left out
    assert "X" not in preds["c4"][:2]
    pop = popularity(_cf_log(), ["cold"], 7, cutoff=CUT, k=3)["cold"]
    assert preds["cold"] == pop
    own = itemcf(_cf_log(), ["c4"], include_own=True, cutoff=CUT, k=3)["c4"]
    assert own[:2] == ["Y", "Z"]  # co(X, X) = 0: own item has no score of its own


# ------------------------------------------------------------------------- visual


def _vis_setup() -> tuple[Events, np.ndarray]:
    e = ev(
        ("02", "u", "A"),  # age 8: outside the 7-day popularity window
        ("08", "p1", "D"),
        ("08", "p2", "D"),
        ("08", "p3", "E"),
        ("01", "p4", "B"),
        items=["A", "B", "C", "D", "E"],
    )
    emb = np.array(
        [
            [1.0, 0.0, 0.0],  # A
            [0.9, 0.1, 0.0],  # B: close to A
            [0.6, 0.8, 0.0],  # C
            [0.0, 0.0, 1.0],  # D: popular, unlike A
            [0.05, 1.0, 0.0],  # E: a little closer to A than D is
        ],
        dtype=np.float32,
    )
    return e, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_visual_ranks_by_cosine() -> None:
    e, emb = _vis_setup()
    preds = visual(e, ["u", "cold"], emb, cutoff=CUT, k=5)
    assert preds["u"] == ["A", "B", "C", "E", "D"]  # own item first (cosine 1)
    assert preds["cold"] == ["D", "E"]  # popularity of the last 7 days only
    assert visual(e, ["u"], emb, exclude_purchased=True, cutoff=CUT, k=2)["u"] == ["B", "C"]
    # candidates limited to items sold in the last 7 days: D, E (+ popularity fill)
    assert visual(e, ["u"], emb, candidate_days=7, cutoff=CUT, k=2)["u"] == ["E", "D"]
    # blended with log-popularity: D (2 sales, cosine 0) overtakes C (no sales, cosine 0.6)
    blend = visual(e, ["u"], emb, pop_weight=0.7, cutoff=CUT, k=4)["u"]
    assert blend == ["A", "B", "D", "C"]  # 0.7 * log1p(2)/log1p(2) = 0.7 > 0.6
    with pytest.raises(ValueError):
        visual(e, ["u"], emb[:3], cutoff=CUT)


def _priced(e: Events, prices: list[float]) -> Events:
    from dataclasses import replace

    return replace(e, price=np.array(prices, dtype=np.float32))


def test_catalogue_prices_median_before_cutoff() -> None:
    e = _priced(
        ev(
            ("01", "a", "A"),
            ("02", "b", "A"),
            ("03", "c", "A"),
            ("04", "a", "B"),
            ("10", "a", "C"),
            items=["A", "B", "C", "D"],
        ),  # fmt: skip
        [0.01, 0.03, 0.02, 0.05, 0.09],
    )
    prices = catalogue_prices(e, CUT)
    assert prices == pytest.approx([0.02, 0.05, 0.0, 0.0])  # C: on the cutoff; D: never sold


def test_the_hybrid_baselines_are_the_live_core_with_valid_overrides() -> None:
    """No offline re-implementation of the hybrid: its baselines are settings of the live core."""
    from streams.settings import Settings
    from vrec_tools.eval import baselines

    assert not hasattr(baselines, "hybrid") and not hasattr(baselines, "HybridWeights")
    assert {n for n in BASELINES if n.startswith("live")} == set(LIVE_ABLATIONS)
    base = Settings()
    for name, overrides in LIVE_ABLATIONS.items():
        assert set(overrides) <= set(Settings.model_fields), name
        changed = Settings.model_validate({**base.model_dump(exclude={"topics"}), **overrides})
        for key, value in overrides.items():
            assert getattr(changed, key) == value != getattr(base, key), (name, key)
