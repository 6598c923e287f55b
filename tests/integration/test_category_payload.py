"""Uploads without a category get the classifier's predicted category and confidence in their
payload (real worker, real encoder, a softmax head trained here on real fixture images)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from encoders import ImageEncoder, load_image
from encoders.classify import CategoryClassifier
from encoders.registry import ensure_model
from encoders.training.classify import HeadConfig, run_classify
from streams.settings import REPO_ROOT, Settings, isolated_run
from vrec_tools.harness import Pipeline
from vrec_tools.replay import read_hm_items

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"

pytestmark = pytest.mark.timeout(600)


def test_uploads_without_category_get_the_predicted_one(kafka_broker, tmp_path):
    products = read_hm_items(SAMPLE / "items.csv")
    with open(SAMPLE / "items.csv", newline="") as f:
        groups = np.array([r["product_code"] for r in csv.DictReader(f)])
    settings = isolated_run(Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path), "cat")
    encoder = ImageEncoder(ensure_model(settings.model_dir), device="cpu")
    x = encoder.embed_images([load_image(p.image_path) for p in products])
    labels = np.array([p.category for p in products])
    run_classify(
        x,
        labels,
        groups,
        "product_type_name",
        HeadConfig(epochs=80, seed=0),
        min_count=3,
        out_dir=tmp_path / "models",
        fractions=(0.6, 0.2, 0.2),
    )
    folder = tmp_path / "models" / "classify-product_type_name"
    classifier = CategoryClassifier(folder)

    settings = settings.model_copy(update={"classifier": str(folder)})
    unlabelled = [p.model_copy(update={"category": None}) for p in products[:12]]
    labelled = products[12:16]
    with Pipeline(settings) as pipe:
        pipe.index(unlabelled + labelled)
        got = pipe.embeddings()
    assert set(got) == {p.item_id for p in unlabelled + labelled}
    for p in unlabelled:
        payload = got[p.item_id].payload
        label, conf = classifier.predict(got[p.item_id].vector)[0]
        assert payload["category"] == label, p.item_id
        assert payload["category_confidence"] == pytest.approx(conf, abs=1e-4)
        assert 0 < payload["category_confidence"] <= 1
        assert payload["category_model"] == classifier.model_id
    for p in labelled:  # a category the shop gave is kept as it is
        payload = got[p.item_id].payload
        assert payload["category"] == p.category and "category_confidence" not in payload
    # a sanity check of the wiring (these items are mostly in the head's training split)
    truth = {p.item_id: p.category for p in products[:12]}
    right = sum(got[i].payload["category"] == truth[i] for i in truth)
    assert right >= 6, json.dumps({i: got[i].payload["category"] for i in truth})
