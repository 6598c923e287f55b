"""encoders.classify / encoders.training.train on real embeddings of real H&M images.

Data: 2,000 catalogue items (whole product codes, seeded) from /work/shared/data/hm (or
$VREC_HM_DIR), embedded through the real EfficientNet-Lite0 encoder and the embedding cache
(hits in seconds when the catalogue is cached); else the 200 images of
tests/fixtures/hm_sample (there the product-group margin is not asserted: 50 test items).
With neither, the tests fail rather than skip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from encoders import ImageEncoder
from encoders.cache import EmbeddingCache, embed_catalogue
from encoders.classify import CategoryClassifier
from encoders.registry import ensure_model
from encoders.training.classify import (
    OTHER,
    HeadConfig,
    encode_labels,
    group_split,
    head_probabilities,
    run_classify,
)
from encoders.training.train import main as train_main
from streams.settings import get_settings
from vrec_tools.eval.data import load_items

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
_DATA_ROOTS = (
    Path(os.environ.get("VREC_HM_DIR", "/work/shared/data/hm")),
    REPO / "tests" / "fixtures" / "hm_sample",
)
SUBSET = 2000
CFG = HeadConfig(epochs=60, lr=1e-3, weight_decay=1e-2, patience=8, seed=0)


@pytest.fixture(scope="module")
def data() -> dict:
    """Embeddings + labels + product codes of a real subset (whole product codes)."""
    for root in _DATA_ROOTS:
        csv_path = root / "items.csv"
        if not (csv_path.is_file() and (root / "images").is_dir()):
            continue
        items = load_items(csv_path)
        exists = np.array([p.is_file() for p in items.image_paths()], dtype=bool)
        rows = np.flatnonzero(exists)
        if len(rows) < 100:
            continue
        if len(rows) > SUBSET:  # whole product codes, seeded, until SUBSET items
            codes = np.unique(items.product_code[rows])
            order = np.random.default_rng(0).permutation(codes)
            sizes = {c: n for c, n in zip(*np.unique(items.product_code[rows], return_counts=True))}
            take, total = set(), 0
            for c in order.tolist():
                if total >= SUBSET:
                    break
                take.add(c)
                total += sizes[c]
            rows = rows[np.isin(items.product_code[rows], list(take))]
        model_dir = Path(os.environ.get("VREC_MODEL_DIR", get_settings().model_dir))
        encoder = ImageEncoder(ensure_model(model_dir), device="cpu")
        all_paths = items.image_paths()
        paths = [all_paths[i] for i in rows.tolist()]
        with EmbeddingCache() as cache:
            x = embed_catalogue(encoder, paths, cache, progress=False)
        return {
            "root": root,
            "csv": csv_path,
            "x": x,
            "codes": items.product_code[rows],
            "rows": [items.rows[i] for i in rows.tolist()],
            "small": len(rows) < 1000,
        }
    pytest.fail(
        "no H&M images found: expected items.csv + images/ under one of "
        f"{[str(r) for r in _DATA_ROOTS]} (set VREC_HM_DIR or build tests/fixtures/hm_sample)"
    )


def test_group_split_has_no_product_code_overlap(data: dict) -> None:
    codes = data["codes"]
    tr, va, te = group_split(codes, seed=0)
    assert len(tr) + len(va) + len(te) == len(codes)
    assert len(np.unique(np.concatenate([tr, va, te]))) == len(codes)
    s_tr, s_va, s_te = (set(codes[i].tolist()) for i in (tr, va, te))
    assert not (s_tr & s_va) and not (s_tr & s_te) and not (s_va & s_te)
    assert 0.7 < len(tr) / len(codes) < 0.9
    assert len(va) > 0 and len(te) > 0
    # seeded: same seed, same split; another seed, another split
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), group_split(codes, seed=0)))
    assert not np.array_equal(te, group_split(codes, seed=1)[2])


def test_rare_classes_map_to_other() -> None:
    raw = np.array(["a"] * 12 + ["b"] * 3 + ["c"] * 2)
    ls = encode_labels(raw, np.arange(15), min_count=10)  # "c" never seen in training
    assert ls.labels == ["a", OTHER]
    assert ls.rare == ["b", "c"]
    assert ls.y.tolist() == [0] * 12 + [1] * 5


@pytest.mark.parametrize("target", ["product_type_name", "product_group_name"])
def test_head_beats_majority_and_onnx_matches_torch(
    data: dict, target: str, tmp_path: Path
) -> None:
    raw = np.array([r[target] for r in data["rows"]], dtype=str)
    small = data["small"]  # the 200-image fixture: fewer items per class, larger val/test
    m = run_classify(
        data["x"],
        raw,
        data["codes"],
        target,
        CFG,
        min_count=3 if small else 10,
        out_dir=tmp_path,
        fractions=(0.5, 0.25, 0.25) if small else (0.8, 0.1, 0.1),
    )
    # On 200 images the product-group head is too noisy against a ~60% majority class to
    # promise a margin; everywhere else the head must beat the majority by 20 points.
    if not (small and target == "product_group_name"):
        assert m["test_top1"] >= m["majority_top1"] + 0.20, m
    assert m["test_top5"] >= m["test_top1"]
    assert m["seconds"] < 60

    onnx_path = Path(m["onnx"])
    assert onnx_path.parent == tmp_path / f"classify-{target}"
    sha = onnx_path.stem
    assert m["model_id"] == f"classify-{target}-{sha}"
    meta = json.loads((onnx_path.parent / f"{sha}.labels.json").read_text())
    metrics = json.loads((onnx_path.parent / f"{sha}.metrics.json").read_text())
    assert metrics["test_top1"] == m["test_top1"]
    current = json.loads((onnx_path.parent / "current.json").read_text())
    assert current["onnx"] == onnx_path.name

    x = data["x"]
    p_torch = head_probabilities(m["_model"], x)
    clf = CategoryClassifier(onnx_path)
    p_onnx = clf.predict_proba(x)
    assert p_onnx.shape == p_torch.shape == (len(x), len(meta["labels"]))
    assert float(np.max(np.abs(p_onnx - p_torch))) <= 1e-5
    np.testing.assert_allclose(p_onnx.sum(axis=1), 1.0, atol=1e-5)

    preds = clf.predict(x[:50])
    assert len(preds) == 50
    labels = set(meta["labels"])
    for label, conf in preds:
        assert label in labels
        assert 0.0 < conf <= 1.0
    # a folder resolves through current.json; one 1-d embedding gives one prediction
    assert CategoryClassifier(onnx_path.parent).predict(x[0]) == [preds[0]]
    top = clf.topk(x[:3], k=5)
    assert [t[0] for t in top] == preds[:3]
    assert all(len(t) == 5 and t[0][1] >= t[-1][1] for t in top)


def test_cli_classify(data: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "models"
    rc = train_main(
        [
            "classify",
            "--target",
            "product_group_name",
            "--items",
            str(data["csv"]),
            "--limit",
            "400",
            "--epochs",
            "5",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "product_group_name" in table and "top1" in table
    folder = out / "classify-product_group_name"
    current = json.loads((folder / "current.json").read_text())
    assert (folder / current["onnx"]).is_file()
    assert (folder / current["onnx"].replace(".onnx", ".metrics.json")).is_file()
