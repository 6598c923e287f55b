"""encoders.training.export + encoders.ImageEncoder:
the real EfficientNet-Lite0 weights and H&M images.

The ONNX model is exported into a pytest tmp dir, or into $VREC_MODEL_DIR when that is set
(reused if already there). Images come from /work/shared/data/hm (or $VREC_HM_DIR), else from
tests/fixtures/hm_sample; with neither the tests fail rather than skip.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from encoders import ImageEncoder, load_image, preprocess
from encoders.image import EMBED_DIM, INPUT_NAME, INPUT_SIZE, OUTPUT_NAME
from encoders.registry import ensure_model
from encoders.training.export import export_onnx
from streams.util import sha256_file

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
_DATA_ROOTS = (
    Path(os.environ.get("VREC_HM_DIR", "/work/shared/data/hm")),
    REPO / "tests" / "fixtures" / "hm_sample",
)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hm_items() -> tuple[Path, list[dict[str, str]]]:
    """(data root, items.csv rows whose image exists)."""
    for root in _DATA_ROOTS:
        csv_path = root / "items.csv"
        if csv_path.is_file() and (root / "images").is_dir():
            with csv_path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if (root / r["image_path"]).is_file()]
            if len(rows) >= 40:
                return root, rows
    pytest.fail(
        "no H&M images found: expected items.csv + images/ under one of "
        f"{[str(r) for r in _DATA_ROOTS]} (set VREC_HM_DIR or build tests/fixtures/hm_sample)"
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("VREC_MODEL_DIR")
    model_dir = Path(env) if env else tmp_path_factory.mktemp("models")
    path = ensure_model(model_dir)
    assert path == model_dir / "efficientnet_lite0.onnx" and path.is_file()
    return path


@pytest.fixture(scope="module")
def encoder(model_path: Path) -> ImageEncoder:
    return ImageEncoder(model_path, device="cpu", threads=2)


@pytest.fixture(scope="module")
def images16(hm_items: tuple[Path, list[dict[str, str]]]) -> list[Image.Image]:
    root, rows = hm_items
    picked = random.Random(16).sample(rows, 16)
    return [load_image(root / r["image_path"]) for r in picked]


# ---------------------------------------------------------------- export


def test_sidecar_matches_onnx(model_path: Path, encoder: ImageEncoder) -> None:
    meta = json.loads(model_path.with_suffix(".json").read_text())
    digest = sha256_file(model_path)
    assert meta["sha256"] == digest
    assert meta["model_id"] == encoder.model_id == f"efficientnet_lite0-{digest[:12]}"
    assert meta["dim"] == EMBED_DIM == encoder.dim == 1280
    assert meta["input_size"] == INPUT_SIZE == encoder.input_size == 224
    assert meta["l2_normalised"] is False
    assert "0.5" in meta["normalisation"]


def test_onnx_graph_io(model_path: Path) -> None:
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == INPUT_NAME == "pixels" and inp.type == "tensor(float)"
    assert inp.shape[1:] == [3, 224, 224] and not isinstance(inp.shape[0], int)
    assert out.name == OUTPUT_NAME == "embedding" and out.shape[1] == 1280


def test_export_is_atomic_and_reproducible(model_path: Path, tmp_path: Path) -> None:
    again = export_onnx(tmp_path / "sub" / "efficientnet_lite0.onnx")
    assert sha256_file(again) == sha256_file(model_path)  # deterministic export: same model_id
    assert sorted(p.name for p in again.parent.iterdir()) == [
        "efficientnet_lite0.json",
        "efficientnet_lite0.onnx",
    ]  # no temp files left behind
    assert ensure_model(again.parent) == again  # existing file: no re-export


def test_torch_onnx_parity_on_real_images(
    model_path: Path, encoder: ImageEncoder, images16: list[Image.Image]
) -> None:
    import torch

    from encoders.training.export import build_torch_model

    x = preprocess(images16)
    assert x.shape == (16, 3, 224, 224)
    with torch.no_grad():
        ref = build_torch_model()(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    raw = sess.run(["embedding"], {"pixels": x})[0]
    assert raw.shape == ref.shape == (16, 1280)
    assert np.abs(ref).max() > 0.5  # real activations, not zeros
    assert float(np.abs(ref - raw).max()) <= 1e-4
    ref_unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert float(np.abs(encoder.embed(x) - ref_unit).max()) <= 1e-5


# ---------------------------------------------------------------- ImageEncoder


def test_embeddings_unit_norm_and_dtype(encoder: ImageEncoder, images16: list[Image.Image]) -> None:
    emb = encoder.embed_images(images16)
    assert emb.shape == (16, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # different products give different vectors
    sims = emb @ emb.T
    assert sims[~np.eye(16, dtype=bool)].max() < 0.999


def test_dynamic_batch_rows_match(encoder: ImageEncoder, images16: list[Image.Image]) -> None:
    x = preprocess(images16[:5])
    batch5 = encoder.embed(x)
    singles = np.concatenate([encoder.embed(x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(batch5, singles, atol=1e-5)
    assert encoder.embed(x[:0]).shape == (0, 1280)


def test_fixed_batch_pads_and_splits_without_changing_rows(
    model_path: Path, encoder: ImageEncoder, images16: list[Image.Image]
) -> None:
    """The fixed-shape mode used on CUDA (one input shape, see encoders.image.CUDA_BATCH):
    batches of 5 (padded to 6), 6 and 16 (split 6+6+4, last padded) give the same rows."""
    fixed = ImageEncoder(model_path, device="cpu", fixed_batch=6)
    assert fixed.fixed_batch == 6 and encoder.fixed_batch is None  # CPU default: none
    calls: list[int] = []
    run = fixed._run
    fixed._run = lambda batch: calls.append(len(batch)) or run(batch)  # type: ignore[method-assign]
    for n in (5, 6, 16):
        got = fixed.embed_images(images16[:n])
        want = encoder.embed_images(images16[:n])
        assert got.shape == (n, encoder.dim)
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert set(calls) == {6}  # the session never saw another batch size
    assert len(calls) == 1 + 1 + 3


def test_embed_rejects_wrong_shape(encoder: ImageEncoder) -> None:
    with pytest.raises(ValueError, match="shape"):
        encoder.embed(np.zeros((2, 3, 128, 128), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encoder.embed(np.zeros((3, 224, 224), np.float32))


def test_colour_variants_closer_than_different_types(
    encoder: ImageEncoder, hm_items: tuple[Path, list[dict[str, str]]]
) -> None:
    root, rows = hm_items
    rng = random.Random(0)
    by_code: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for r in rows:
        by_code[r["product_code"]].append(r)
    codes = sorted(c for c, v in by_code.items() if len(v) >= 2)
    assert len(codes) >= 20, "need 20 product codes with two colour variants"
    variants = [tuple(rng.sample(by_code[c], 2)) for c in rng.sample(codes, 20)]
    assert all(a["article_id"] != b["article_id"] for a, b in variants)
    randoms: list[tuple[dict[str, str], dict[str, str]]] = []
    while len(randoms) < 20:
        a, b = rng.sample(rows, 2)
        if a["product_type_name"] != b["product_type_name"]:
            randoms.append((a, b))

    def cosines(pairs: list) -> np.ndarray:
        left = encoder.embed_images([load_image(root / a["image_path"]) for a, _ in pairs])
        right = encoder.embed_images([load_image(root / b["image_path"]) for _, b in pairs])
        return (left * right).sum(axis=1)

    same, diff = cosines(variants), cosines(randoms)
    # measured: variants ~0.72-0.78 mean, random different-type pairs ~0.38-0.55
    assert same.mean() > diff.mean() + 0.1, (same.mean(), diff.mean())
    assert (same[:, None] > diff[None, :]).mean() > 0.75


def test_model_id_stable_between_loads(model_path: Path, encoder: ImageEncoder) -> None:
    other = ImageEncoder(model_path, device="cpu")
    assert other.model_id == encoder.model_id
    assert re.fullmatch(r"efficientnet_lite0-[0-9a-f]{12}", other.model_id)
    assert other.providers == ["CPUExecutionProvider"]


def test_auto_device_is_quiet_and_consistent(
    model_path: Path,
    encoder: ImageEncoder,
    images16: list[Image.Image],
    capfd: pytest.CaptureFixture[str],
) -> None:
    auto = ImageEncoder(model_path, device="auto")
    out, err = capfd.readouterr()
    assert out == "" and err == "", "device='auto' must keep the log clean"
    assert auto.providers[-1] == "CPUExecutionProvider"
    tol = 1e-5 if auto.device == "cpu" else 2e-3
    np.testing.assert_allclose(
        auto.embed_images(images16[:4]), encoder.embed_images(images16[:4]), atol=tol
    )


def test_cuda_device_loads_or_fails_clearly(model_path: Path) -> None:
    auto = ImageEncoder(model_path, device="auto")
    if auto.device == "cuda":
        assert ImageEncoder(model_path, device="cuda").providers[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(RuntimeError, match="CUDA"):
            ImageEncoder(model_path, device="cuda")
    with pytest.raises(ValueError, match="device"):
        ImageEncoder(model_path, device="tpu")


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vrec export-model"):
        ImageEncoder(tmp_path / "none.onnx")


def test_embed_from_worker_thread(encoder: ImageEncoder, images16: list[Image.Image]) -> None:
    x = preprocess(images16[:8])
    expected = encoder.embed(x)
    seen: set[int] = set()

    def job(i: int) -> np.ndarray:
        seen.add(threading.get_ident())
        return encoder.embed(x[i : i + 4])

    with ThreadPoolExecutor(max_workers=1) as pool:
        got = np.concatenate(list(pool.map(job, [0, 4])))
    assert threading.get_ident() not in seen
    np.testing.assert_allclose(got, expected, atol=1e-5)
