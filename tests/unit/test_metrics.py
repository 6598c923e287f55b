"""Ranking metrics against hand-computed values (H&M / Kaggle MAP@12 definition)."""

from __future__ import annotations

import math

import pytest

from vrec_tools.eval.metrics import (
    apk,
    coverage,
    evaluate,
    hit_rate_at_k,
    map_at_k,
    ndcg_at_k,
    recall_at_k,
)


def test_apk_hm_definition_example() -> None:
    # hits at ranks 2 and 4: (1/2 + 2/4) / min(12, 2)
    assert apk({"a", "b"}, ["x", "a", "y", "b"]) == pytest.approx(0.5)


def test_apk_perfect_and_miss() -> None:
    assert apk({"a", "b"}, ["a", "b"]) == pytest.approx(1.0)
    assert apk({"a", "b"}, ["b", "a", "x"]) == pytest.approx(1.0)
    assert apk({"a"}, ["x", "y", "z"]) == 0.0


def test_apk_empty_actual_and_empty_prediction() -> None:
    assert apk(set(), ["a", "b"]) == 0.0
    assert apk({"a"}, []) == 0.0


def test_apk_duplicates_count_once() -> None:
    # The repeated "a" is dropped, so "b" moves up to rank 2: (1/1 + 2/2) / 2 = 1.
    assert apk({"a", "b"}, ["a", "a", "b"]) == pytest.approx(1.0)
    # Without dedupe a duplicate hit would add a precision term and exceed the divisor.
    assert apk({"a"}, ["a", "a", "a"]) == pytest.approx(1.0)


def test_apk_fewer_than_k_predictions_and_divisor() -> None:
    # Divisor is min(12, |actual|) even when only 1 item is predicted: 1/1 / 3.
    assert apk({"a", "b", "c"}, ["a"]) == pytest.approx(1 / 3)
    # 20 actual items: divisor is 12, not 20.
    actual = {f"i{n}" for n in range(20)}
    assert apk(actual, [f"i{n}" for n in range(12)]) == pytest.approx(1.0)


def test_apk_cuts_at_k() -> None:
    predicted = [f"x{n}" for n in range(12)] + ["a"]
    assert apk({"a"}, predicted) == 0.0
    assert apk({"a"}, predicted, k=13) == pytest.approx(1 / 13)
    # k=2: hit at rank 2 only -> (1/2) / min(2, 3)
    assert apk({"a", "b", "c"}, ["x", "a", "b"], k=2) == pytest.approx(0.25)


def test_apk_rejects_bad_k() -> None:
    with pytest.raises(ValueError):
        apk({"a"}, ["a"], k=0)


def test_hit_rate_recall() -> None:
    assert hit_rate_at_k({"a", "b"}, ["x", "b"]) == 1.0
    assert hit_rate_at_k({"a", "b"}, ["x", "y"]) == 0.0
    assert hit_rate_at_k(set(), ["a"]) == 0.0
    assert recall_at_k({"a", "b", "c", "d"}, ["a", "x", "c", "a"]) == pytest.approx(0.5)
    assert recall_at_k({"a", "b"}, ["x", "a"], k=1) == 0.0
    assert recall_at_k(set(), ["a"]) == 0.0


def test_ndcg_binary() -> None:
    # hit at rank 2 only; ideal has min(12, 2) = 2 hits at ranks 1-2.
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k({"a", "b"}, ["x", "a"]) == pytest.approx(expected)
    assert ndcg_at_k({"a", "b"}, ["b", "a"]) == pytest.approx(1.0)
    # duplicates count once: "a" at 1, the second "a" dropped, "b" at rank 2 -> perfect.
    assert ndcg_at_k({"a", "b"}, ["a", "a", "b"]) == pytest.approx(1.0)
    # ideal is capped at k: 3 actual items, k=1, hit at rank 1 -> 1.0
    assert ndcg_at_k({"a", "b", "c"}, ["c"], k=1) == pytest.approx(1.0)
    assert ndcg_at_k(set(), ["a"]) == 0.0


def test_map_at_k_missing_users_count_zero() -> None:
    truth = {"u1": {"a", "b"}, "u2": {"c"}, "u3": {"d"}}
    preds = {"u1": ["x", "a", "y", "b"], "u2": ["c"], "other": ["d"]}
    # u1 0.5, u2 1.0, u3 missing -> 0
    assert map_at_k(truth, preds) == pytest.approx(1.5 / 3)


def test_coverage() -> None:
    assert coverage([["a", "b"], ["b", "c"], []], 10) == pytest.approx(0.3)
    assert coverage([["a", "b", "c"]], 10, k=2) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        coverage([["a"]], 0)


def test_evaluate_all_and_warm() -> None:
    truth = {"u1": {"a", "b"}, "u2": {"c"}, "u3": {"d"}, "u4": {"e"}}
    preds = {"u1": ["x", "a", "y", "b"], "u2": ["q", "c"], "u3": ["z"], "nobody": ["e"]}
    warm = {"u1", "u2", "not-in-truth"}
    r = evaluate(preds, truth, warm, catalogue_size=20)
    assert r["users"] == 4
    assert r["warm_users"] == 2
    assert r["predicted_users"] == 3
    assert r["map_all"] == pytest.approx((0.5 + 0.5 + 0 + 0) / 4)
    assert r["map_warm"] == pytest.approx((0.5 + 0.5) / 2)
    assert r["hr_all"] == pytest.approx(2 / 4)
    assert r["hr_warm"] == pytest.approx(1.0)
    assert r["recall_warm"] == pytest.approx(1.0)
    assert r["ndcg_warm"] == pytest.approx(
        ((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)) + (1 / math.log2(3)) / 1.0)
        / 2
    )
    # coverage over truth users' lists only: x a y b q c z = 7 of 20 ("nobody" ignored)
    assert r["coverage"] == pytest.approx(7 / 20)


def test_evaluate_no_warm_users() -> None:
    r = evaluate({"u": ["a"]}, {"u": {"a"}}, set())
    assert r["map_all"] == 1.0
    assert r["map_warm"] == 0.0
    assert r["warm_users"] == 0
    assert "coverage" not in r
