"""encoders.training.adversarial / ``vrec train adversarial``:
real product photos (hm_sample fixture).

A tiny run (about 32 images, one epoch) must complete, export a 224 px encoder that
:class:`encoders.ImageEncoder` loads under the model id the metrics name, and make the
embeddings of its own training images more stable under FGSM than the original model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoders import ImageEncoder, load_image
from encoders.training.adversarial import PERTURBATIONS, attack, perturb, query_recall
from encoders.training.train import main as train_main
from vrec_tools.eval.data import load_items

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "hm_sample"


def test_perturbations_change_pixels_but_keep_size() -> None:
    img = load_image(load_items(FIXTURE).image_paths()[0])
    rng = np.random.default_rng(0)
    for kind in PERTURBATIONS:
        out = perturb(img, kind, rng)
        assert out.mode == "RGB"
        if kind != "crop":
            assert out.size == img.size
        assert not np.array_equal(np.asarray(out), np.asarray(img)), kind
    with pytest.raises(ValueError):
        perturb(img, "blur", rng)


def test_attack_stays_in_the_eps_ball() -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten())
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    eps = 8 / 255
    xa = attack(model, x, eps, steps=2)
    assert float((xa - x).abs().max()) <= eps + 1e-6
    assert float(xa.abs().max()) <= 1.0


def test_query_recall_is_one_for_identical_queries() -> None:
    x = np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert query_recall(x, x, 5) == 1.0
    assert query_recall(x, -x, 5) < 0.5


def test_cli_adversarial_tiny_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "models"
    rc = train_main(
        [
            "adversarial",
            "--items",
            str(FIXTURE / "items.csv"),
            "--limit",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--lr",
            "1e-4",
            "--holdout",
            "0.4",
            "--eval-n",
            "14",
            "--attack-n",
            "6",
            "--eval-train",
            "16",
            "--pgd-steps",
            "2",
            "--seed",
            "0",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache.sqlite"),
            "--no-progress",
        ]
    )
    assert rc == 0
    report = capsys.readouterr().out
    assert "fgsm" in report and "clean NN same type" in report

    folder = out / "adversarial-efficientnet_lite0"
    current = json.loads((folder / "current.json").read_text())
    onnx_path = folder / current["onnx"]
    sha = onnx_path.stem
    m = json.loads((folder / f"{sha}.metrics.json").read_text())
    assert m["model_id"] == current["model_id"] == f"adversarial-efficientnet_lite0-{sha}"
    for part in ("heldout_before", "heldout_after", "train_subset_before", "train_subset_after"):
        for kind in [*PERTURBATIONS, "fgsm", "pgd2"]:
            assert 0.0 <= m[part][kind]["recall"] <= 1.0
            assert -1.0 <= m[part][kind]["cos"] <= 1.0
        assert "clean_nn_same_type" in m[part]
    assert m["onnx_max_abs_diff"] <= 1e-4
    assert m["heldout_onnx_vs_torch_max_abs_diff"] <= 1e-4
    # something that can fail: on the images it was trained on, FGSM moves embeddings less
    before, after = m["train_subset_before"]["fgsm"], m["train_subset_after"]["fgsm"]
    assert after["cos"] > before["cos"], (before, after)
    assert after["recall"] >= before["recall"], (before, after)
    # and clean embeddings stay close to the original model's
    assert m["train_subset_after"]["clean_recall_vs_original"] >= 0.8

    enc = ImageEncoder(onnx_path, device="cpu")
    assert enc.model_id == m["model_id"]
    assert enc.input_size == 224 and enc.dim == 1280
    images = [load_image(p) for p in load_items(FIXTURE).image_paths()[:3]]
    emb = enc.embed_images(images)
    assert emb.shape == (3, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
