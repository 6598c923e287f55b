"""vrec eval catalogue: precision@10, coverage and the classifier split on known vectors; the
CLI on the H&M sample (JSON keys, markdown, PNG grid, paths relative to the JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vrec_tools.eval.catalogue import (
    classifier_top1,
    column_map,
    coverage,
    embedded_mask,
    joint_labels,
    main,
    nearest_neighbours,
    precision_at_k,
    read_catalogue,
    split_holdout,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# two tight clusters on the x and y axes, one row per corner of each cluster
X = np.array([[1, 0.1], [1, -0.1], [1, 0.0], [0.1, 1], [-0.1, 1], [0.0, 1]], np.float32)


def test_neighbours_and_precision_known_answers() -> None:
    nb, sim = nearest_neighbours(X, k=2)
    assert {frozenset(r) for r in nb[:3].tolist()} == {frozenset({1, 2}), frozenset({0, 2}),
                                                       frozenset({0, 1})}  # fmt: skip
    assert (sim[:, 0] >= sim[:, 1]).all()
    assert precision_at_k(nb, ["a", "a", "a", "b", "b", "b"]) == 1.0
    # one label per cluster but the third row of each cluster differs: 4 rows score 1/2 and
    # the two odd rows 0 -> (4 * 0.5) / 6
    assert precision_at_k(nb, ["a", "a", "c", "b", "b", "d"]) == pytest.approx(2 / 6)
    # k larger than the catalogue: every other row is a neighbour
    nb5, _ = nearest_neighbours(X, k=10)
    assert (nb5[:, :5] >= 0).all() and (nb5[:, 5:] == -1).all()
    assert precision_at_k(nb5, ["a", "a", "a", "b", "b", "b"]) == pytest.approx(2 / 5)


def test_groups_are_not_neighbours_and_zero_rows_are_uncovered() -> None:
    x = np.vstack([X, np.zeros((2, 2), np.float32)])
    assert coverage(x) == pytest.approx(6 / 8)
    assert embedded_mask(x).tolist() == [True] * 6 + [False] * 2
    groups = np.array([0, 0, 1, 2, 2, 3, 4, 5])
    nb, _ = nearest_neighbours(x, k=1, groups=groups)
    assert nb[0, 0] == 2 and nb[1, 0] == 2  # its group-mate 1 / 0 is left out
    assert nb[3, 0] == 5 and nb[4, 0] == 5
    assert (nb[6:] == -1).all()  # unembedded rows have no neighbours ...
    assert not np.isin(nb, [6, 7]).any()  # ... and are nobody's neighbour
    labels = ["a", "a", "a", "b", "b", "b", "a", "a"]
    assert precision_at_k(nb, labels) == 1.0  # the two zero rows are not queries


def test_label_and_colour_precision() -> None:
    nb, _ = nearest_neighbours(X, k=2)
    labels = ["top"] * 3 + ["trousers"] * 3
    colours = ["black", "black", "white", "black", "black", "black"]
    both = joint_labels(labels, colours)
    assert precision_at_k(nb, labels) == 1.0
    # rows 0, 1 see one black top of two; row 2 (white) sees none; trousers see all
    assert precision_at_k(nb, both) == pytest.approx((0.5 + 0.5 + 0 + 3) / 6)


def test_split_holdout_keeps_groups_together() -> None:
    groups = np.repeat(np.arange(50), 4)
    tr, te = split_holdout(len(groups), groups, 0.3, seed=1)
    assert len(tr) + len(te) == 200 and set(tr).isdisjoint(te)
    assert set(groups[tr]).isdisjoint(groups[te])
    assert 0.1 < len(te) / 200 < 0.5
    tr2, te2 = split_holdout(200, None, 0.3, seed=1)  # by item
    assert len(tr2) + len(te2) == 200 and len(set(groups[te2]) & set(groups[tr2])) > 0
    with pytest.raises(ValueError):
        split_holdout(10, None, 1.0)


def test_classifier_top1_on_separable_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(16, dtype=np.float32)[:4] * 5
    y = np.repeat(np.arange(4), 60)
    x = centres[y] + rng.normal(0, 0.3, (240, 16)).astype(np.float32)
    labels = np.array(["a", "b", "c", "d"])[y]
    m = classifier_top1(x, labels, groups=np.arange(240) // 3)
    assert m["classifier_top1"] == 1.0
    assert m["classifier_split"] == "by group" and m["classifier_test_items"] > 0
    # labels unrelated to the vectors: about chance
    shuffled = rng.permutation(labels)
    assert classifier_top1(x, shuffled)["classifier_top1"] < 0.6


def test_catalogue_resolves_mapped_fields() -> None:
    shop = FIXTURES / "other_shop"
    cat = read_catalogue(shop / "catalogue.csv", column_map(map_file=shop / "mapping.json"))
    assert cat.resolve("category") == "type" and cat.resolve("colour") == "colour"
    assert cat.resolve("group") == "family"
    assert set(cat.column("category")) >= {"trousers", "sweater", "blouse", "top"}
    with pytest.raises(KeyError):
        cat.column("no_such_column")


def test_cli_on_hm_sample_writes_json_markdown_and_grid(tmp_path: Path) -> None:
    out = tmp_path / "report" / "hm.json"
    rc = main(
        [
            "--items", str(FIXTURES / "hm_sample" / "items.csv"),
            "--label", "product_type_name", "--colour", "colour_group_name",
            "--json", str(out), "--queries", "3", "--no-progress", "--text-weight", "0",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("precision_at_10", "precision_at_10_label_colour", "classifier_top1", "items"):
        assert isinstance(report[key], (int, float)), key
    assert report["items"] == 200 and report["coverage"] == 1.0
    assert report["group"] == "product_code"  # the H&M map's group
    assert report["precision_at_10"] > report["random_precision_at_10"] * 2
    assert report["precision_at_10_label_colour"] <= report["precision_at_10"]
    assert 0 < report["classifier_top1"] <= 1
    grid = out.parent / report["grid"]
    assert grid.is_file() and grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.with_suffix(".md").is_file()
    assert len(report["examples"]) == 3
    for ex in report["examples"]:
        assert (out.parent / ex["image"]).is_file()
        assert len(ex["neighbours"]) == 10
        assert all((out.parent / n["image"]).is_file() for n in ex["neighbours"])


def test_fused_precision_uses_the_text_vectors() -> None:
    from vrec_tools.catalogue_import import HM_MAP
    from vrec_tools.eval.catalogue import Catalogue, catalogue_report

    labels = ["a", "b"] * 12  # 11 same-label others per item: room for 10 neighbours
    rows = [{"t": lab, "c": "black"} for lab in labels]
    cat = Catalogue(Path("x.csv"), [str(i) for i in range(24)], [None] * 24, rows, HM_MAP)
    image = np.random.default_rng(0).normal(size=(24, 8)).astype(np.float32)  # no label signal
    text = np.array([[1.0, 0.0] if lab == "a" else [0.0, 1.0] for lab in labels], np.float32)
    report, _ = catalogue_report(cat, image, "t", "c", text_vectors=text, text_weight=1.0,
                                 classify=False)  # fmt: skip
    assert report["precision_at_10"] < 0.8
    assert report["precision_at_10_fused"] == 1.0  # w = 1: the text alone ranks
    assert report["precision_at_10_label_colour_fused"] == 1.0
    off, _ = catalogue_report(cat, image, "t", text_vectors=text, text_weight=0.0, classify=False)
    assert "precision_at_10_fused" not in off and off["classifier_top1"] is None
