"""encoders.training.distill / ``vrec train distill``:
real product photos (tests/fixtures/hm_sample).

A tiny run (48 images, whole product codes, 1 epoch at 128 px) must complete, export a student
that :class:`encoders.ImageEncoder` loads under the model id the metrics name, embed with unit
norm at the student's own input size, and lower the distillation loss on its training images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoders import ImageEncoder, load_image
from encoders.training.distill import build_student, select_rows
from encoders.training.train import main as train_main
from vrec_tools.eval.data import load_items

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "hm_sample"


def test_select_rows_keeps_whole_product_codes() -> None:
    codes = np.array([1, 1, 2, 3, 3, 3, 4, 5, 5])
    exists = np.ones(len(codes), dtype=bool)
    exists[7] = False
    rows = select_rows(codes, exists, limit=4, seed=0)
    assert len(rows) >= 4 and 7 not in rows.tolist()
    picked = set(codes[rows].tolist())
    for c in picked - {5}:  # every picked code complete (code 5 lost its missing row only)
        assert set(np.flatnonzero(codes == c).tolist()) <= set(rows.tolist())
    assert np.array_equal(rows, select_rows(codes, exists, limit=4, seed=0))
    assert len(select_rows(codes, exists, limit=0, seed=0)) == int(exists.sum())


def test_student_loads_imagenet_weights() -> None:
    import torch

    student = build_student(pretrained=True)
    fresh = build_student(pretrained=False)
    w, w0 = student.features[0][0].weight, fresh.features[0][0].weight
    assert not torch.equal(w, w0)  # the packaged weights, not a random init
    with torch.no_grad():
        out = student(torch.zeros(2, 3, 128, 128))
    assert out.shape == (2, 1280)


def test_cli_distill_tiny_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "models"
    rc = train_main(
        [
            "distill",
            "--items",
            str(FIXTURE / "items.csv"),
            "--limit",
            "48",
            "--epochs",
            "1",
            "--size",
            "128",
            "--batch-size",
            "16",
            "--lr",
            "1e-4",
            "--holdout",
            "0.25",
            # a heavily regularised linear-probe start: on 48 images a light ridge fit
            # interpolates the teacher, leaving nothing for the training loop to show
            "--ridge-alpha",
            "100",
            "--seed",
            "0",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache.sqlite"),
            "--bench-n",
            "8",
            "--no-progress",
        ]
    )
    assert rc == 0
    report = capsys.readouterr().out
    assert "student distilled" in report and "student / teacher" in report

    folder = out / "distill-mobilenet_v2"
    current = json.loads((folder / "current.json").read_text())
    onnx_path = folder / current["onnx"]
    sha = onnx_path.stem
    metrics = json.loads((folder / f"{sha}.metrics.json").read_text())
    assert metrics["model_id"] == current["model_id"] == f"distill-mobilenet_v2-{sha}"
    for key in (
        "teacher_model_id",
        "n_train",
        "n_heldout",
        "heldout_recall@10_before",
        "heldout_recall@10_after",
        "heldout_nn_same_type_student",
        "speed_images_per_s",
        "speedup_b1",
        "speedup_b32",
        "onnx_max_abs_diff",
        "history",
    ):
        assert key in metrics, key
    assert metrics["n_train"] + metrics["n_heldout"] == metrics["n_images"] >= 48
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    assert metrics["heldout_onnx_vs_torch_max_abs_diff"] <= 1e-4
    assert 0.0 <= metrics["heldout_recall@10_after"] <= 1.0
    assert metrics["speed_images_per_s"]["student"]["b32"] > 0
    # something that can fail: training lowered the distillation loss on its images
    assert metrics["train_loss_after"] < metrics["train_loss_before"], metrics

    enc = ImageEncoder(onnx_path, device="cpu")
    assert enc.model_id == metrics["model_id"]
    assert enc.input_size == 128 and enc.dim == 1280
    items = load_items(FIXTURE)
    images = [load_image(p) for p in items.image_paths()[:3]]
    emb = enc.embed_images(images)
    assert emb.shape == (3, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    # a worker runs the student with VREC_ENCODER_MODEL=<folder>: its model id is the student's
    from encoders import model_file
    from streams.runtime import Runtime
    from streams.settings import Settings

    assert model_file(folder) == model_file(onnx_path) == onnx_path
    with pytest.raises(FileNotFoundError, match="current.json"):
        model_file(tmp_path)
    rt = Runtime(Settings(encoder_model=str(folder), store="qdrant-memory", data_dir=tmp_path))
    rt.open()
    try:
        assert rt.model_id == metrics["model_id"] and rt.encoder.input_size == 128
    finally:
        rt.close()
