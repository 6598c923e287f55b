"""Any shop's catalogue (tests/fixtures/other_shop, a non-H&M schema) end to end: `vrec train
classify --label` on it, then its import through a real worker with the trained colour head:
every good row indexed, every bad row dead-lettered with its reason, the colour predicted for
uploads without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoders.classify import CategoryClassifier
from encoders.training.train import main as train_main
from streams.settings import REPO_ROOT, Settings, isolated_run
from vrec_tools.catalogue_import import Accepted, load_map_file, plan_import, send_import
from vrec_tools.harness import Pipeline

SHOP = REPO_ROOT / "tests" / "fixtures" / "other_shop"

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]


def _train(label: str, out: Path, capsys) -> dict:
    rc = train_main(
        [
            "classify",
            "--label",
            label,
            "--items",
            str(SHOP / "catalogue.csv"),
            "--map-file",
            str(SHOP / "mapping.json"),
            "--group",
            "family",
            "--min-count",
            "3",
            "--split",
            "0.5,0.25,0.25",
            "--epochs",
            "40",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "top1" in printed and "per class" in printed
    folder = out / f"classify-{label}"
    current = json.loads((folder / "current.json").read_text())
    metrics = json.loads((folder / current["onnx"].replace(".onnx", ".metrics.json")).read_text())
    assert metrics["n_items"] == 48 and metrics["group"] == "family"
    assert sum(r["n_test"] for r in metrics["per_class"]) == metrics["n_test"]
    assert 0 <= metrics["test_top1"] <= metrics["test_top5"] <= 1
    return metrics


def test_train_label_on_another_shop(tmp_path: Path, capsys) -> None:
    m_type = _train("type", tmp_path, capsys)
    assert m_type["field"] == "category"  # the map's category column fills category
    assert CategoryClassifier(tmp_path / "classify-type").field == "category"
    m_colour = _train("colour", tmp_path, capsys)
    assert m_colour["field"] == "colour"  # an attribute fills its own name
    assert m_colour["skipped"]["bad price"] == 2  # refused rows are not trained on
    # split by family: no family on two sides (families are whole in the 48 items)
    assert m_colour["n_train"] + m_colour["n_val"] + m_colour["n_test"] == 48


def test_import_through_the_worker(kafka_broker, tmp_path: Path, capsys) -> None:
    _train("colour", tmp_path / "models", capsys)
    head = CategoryClassifier(tmp_path / "models" / "classify-colour")
    settings = isolated_run(
        Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path),
        "shop",
        classifier=str(tmp_path / "models" / "classify-colour"),
        encoder_batch=16,
    )
    plan = plan_import(SHOP / "catalogue.csv", load_map_file(SHOP / "mapping.json"))
    assert len(plan.accepted) == 48 and len(plan.refused) == 6
    # four uploads without a colour: the worker predicts it
    unlabelled = {a.product.item_id for a in plan.accepted[:4]}
    for i, a in enumerate(plan.accepted[:4]):
        plan.accepted[i] = Accepted(a.line, a.product.model_copy(update={"attributes": None}), {})
    with Pipeline(settings) as pipe:
        assert pipe.replayer is not None
        sent = send_import(pipe.replayer, plan)
        assert sent == 48
        pipe.wait_until(
            "48 products indexed and 6 rows dead-lettered",
            lambda: pipe.count("item_embeddings") >= 48 and pipe.count("dead_letters") >= 6,
            timeout=300,
        )
        embedded = pipe.embeddings()
        letters = pipe.dead_letters()
    assert set(embedded) == {p.item_id for p in plan.products}
    for p in plan.products:
        e = embedded[p.item_id]
        assert e.vector.shape == (head.dim,)
        assert e.payload["price"] == p.price and e.payload["product_code"] == p.product_code
        assert e.payload["category"] == p.category
        if p.item_id in unlabelled:
            label, conf = head.predict(e.vector)[0]
            assert e.payload["colour"] == label and e.payload["colour_model"] == head.model_id
            assert e.payload["colour_confidence"] == pytest.approx(conf, abs=1e-4)
        else:  # the shop's colour is kept
            assert e.payload["colour"] == p.attributes["colour"]
            assert "colour_model" not in e.payload
    assert len(letters) == 6
    got = {dl.offset: dl for dl in letters}
    for r in plan.refused:
        dl = got[r.line]
        assert dl.stage == "import" and dl.topic == str(SHOP / "catalogue.csv")
        assert dl.reason == r.message and r.reason in dl.reason
        assert dl.value == r.raw
