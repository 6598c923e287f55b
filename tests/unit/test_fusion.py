"""encoders.fusion: fused scores, fused vectors and the fused user vector (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.fusion import (
    check_weight,
    combine_scores,
    fuse,
    fused_score,
    fused_user_vector,
    l2_normalise,
)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return l2_normalise(rng.normal(size=(n, dim)))


@pytest.fixture(scope="module")
def vecs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return unit(rng, 50, 32), unit(rng, 50, 12)


@pytest.mark.parametrize("w", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_fused_dot_product_is_fused_score(vecs, w: float) -> None:
    img, txt = vecs
    f = fuse(img, txt, w)
    assert f.shape == (50, 44) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-6)
    want = fused_score(img @ img.T, txt @ txt.T, w)
    np.testing.assert_allclose(f @ f.T, want, atol=1e-5)


def test_weight_endpoints_are_the_single_modalities(vecs) -> None:
    img, txt = vecs
    np.testing.assert_allclose(fuse(img, txt, 0.0)[:, :32], img, atol=1e-7)
    assert not fuse(img, txt, 0.0)[:, 32:].any()
    np.testing.assert_allclose(fuse(img, txt, 1.0)[:, 32:], txt, atol=1e-7)
    assert not fuse(img, txt, 1.0)[:, :32].any()


def test_fuse_normalises_blocks_and_keeps_zero_rows(vecs) -> None:
    img, txt = vecs
    scaled = fuse(img * 3.0, txt * 0.5, 0.5)
    np.testing.assert_allclose(scaled, fuse(img, txt, 0.5), atol=1e-6)
    txt0 = txt.copy()
    txt0[4] = 0.0  # item 4 has no text
    f = fuse(img, txt0, 0.5)
    assert np.isfinite(f).all()
    assert np.linalg.norm(f[4]) == pytest.approx(np.sqrt(0.5), abs=1e-6)
    one = fuse(img[0], txt[0], 0.3)  # a single vector works too
    np.testing.assert_allclose(one, fuse(img, txt, 0.3)[0], atol=1e-7)
    with pytest.raises(ValueError):
        fuse(img[:3], txt[:4], 0.5)


def test_fused_score_weights_the_two_cosines() -> None:
    assert float(fused_score(0.8, 0.2, 0.25)) == pytest.approx(0.65)
    np.testing.assert_allclose(fused_score([1.0, 0.0], [0.0, 1.0], 0.5), [0.5, 0.5])
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError):
            check_weight(bad)


def test_fused_user_vector_is_concatenated_decayed_means(vecs) -> None:
    img, txt = vecs
    items = np.array([3, 9, 9, 20])
    weights = 2.0 ** (-np.array([1.0, 5.0, 30.0, 60.0]) / 30.0)
    w = 0.4
    u = fused_user_vector(img[items], txt[items], weights, w)
    m_i = (weights[:, None] * img[items]).sum(0) / weights.sum()
    m_t = (weights[:, None] * txt[items]).sum(0) / weights.sum()
    np.testing.assert_allclose(u, np.concatenate([np.sqrt(1 - w) * m_i, np.sqrt(w) * m_t]), 1e-5)
    # its score against every item is the w-weighted sum of the per-modality mean dot products
    scores = fuse(img, txt, w) @ u
    np.testing.assert_allclose(scores, (1 - w) * img @ m_i + w * txt @ m_t, atol=1e-5)
    # a one-item history ranks that item first, with score 1
    solo = fuse(img, txt, w) @ fused_user_vector(img[[7]], txt[[7]], np.ones(1), w)
    assert int(np.argmax(solo)) == 7 and solo[7] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        fused_user_vector(img[items], txt[items], np.zeros(4), w)


def test_text_changes_the_ranking(vecs) -> None:
    """Item 1 is item 0's image twin; item 2 looks less alike but has item 0's text."""
    img, txt = vecs[0].copy(), vecs[1].copy()
    img[1] = l2_normalise(img[0] + 0.2 * img[1])  # cos ~0.98
    img[2] = l2_normalise(img[0] + 1.0 * img[2])  # cos ~0.7
    txt[2] = txt[0]
    best = {}
    for w in (0.0, 0.5):
        f = fuse(img, txt, w)
        best[w] = int(np.argsort(-(f @ f[0]))[1])  # best neighbour after the item itself
    assert best == {0.0: 1, 0.5: 2}


def test_combine_scores_falls_back_to_image_without_text() -> None:
    got = combine_scores({"a": 0.9, "b": 0.5, "c": 0.4}, {"a": 0.1, "b": 0.9, "c": None}, 0.5)
    assert got == pytest.approx({"a": 0.5, "b": 0.7, "c": 0.4})
    assert combine_scores({"x": 0.3}, {}, 1.0) == {"x": 0.3}
