"""encoders.training.multimodal helpers:
neighbour rates, cached catalogue text vectors, fused matrix."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.cache import EmbeddingCache
from encoders.fusion import l2_normalise
from encoders.training.multimodal import catalogue_text_embeddings, fused_catalogue, neighbour_rates


class FakeTextEncoder:
    """Deterministic 8-d 'embedding' of a text; counts what it was asked to embed."""

    model_id = "fake-text-1"
    dim = 8

    def __init__(self) -> None:
        self.seen: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        rows = [np.random.default_rng(sum(map(ord, t))).normal(size=8) for t in texts]
        return l2_normalise(np.array(rows))


def test_text_embeddings_are_cached_by_text(tmp_path) -> None:
    texts = ["red dress", "blue jeans", "red dress", "", "wool hat"]
    enc = FakeTextEncoder()
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        first = catalogue_text_embeddings(texts, enc, cache)
        assert sorted(enc.seen) == ["blue jeans", "red dress", "wool hat"]  # distinct, non-empty
        assert not first[3].any()  # empty text: zero row
        np.testing.assert_array_equal(first[0], first[2])
        enc.seen.clear()
        again = catalogue_text_embeddings([*texts, "new"], enc, cache)
        assert enc.seen == ["new"]  # everything else came from the cache
        np.testing.assert_allclose(again[:5], first, atol=0)
        assert cache.count("fake-text-1") == 4


def test_neighbour_rates_leave_out_the_own_product_code() -> None:
    # items 0/1 are one product (identical vectors); item 2 is near them with their label,
    # item 3 is nearer still but of another label
    x = l2_normalise(np.array([[1, 0, 0], [1, 0, 0], [0.9, 0.1, 0], [0.95, 0, 0.05], [0, 0, 1.0]]))
    labels = np.array(["dress", "dress", "dress", "shorts", "hat"])
    groups = np.array([10, 10, 20, 30, 40])
    r = neighbour_rates(x, labels, groups, k=2)
    # NN (own code excluded): 0->3 (shorts), 1->3, 2->0 or 1 (dress), 3->0/1 (dress), 4->3/2
    assert r["n_queries"] == 5
    assert r["nn_at1"] == pytest.approx(1 / 5)
    # a zero row is neither a query nor a neighbour: without item 3, 0->2, 1->2, 2->0 match
    x0 = x.copy()
    x0[3] = 0
    assert neighbour_rates(x0, labels, groups, k=2)["n_queries"] == 4
    assert neighbour_rates(x0, labels, groups, k=2)["nn_at1"] == pytest.approx(3 / 4)


def test_fused_catalogue_keeps_imageless_rows_zero() -> None:
    img = l2_normalise(np.array([[1.0, 0], [0, 0], [0, 1.0]]))
    txt = l2_normalise(np.array([[1.0, 1], [1, 0], [0, 1.0]]))
    f = fused_catalogue(img, txt, 0.5)
    assert f.shape == (3, 4) and not f[1].any()
    np.testing.assert_allclose(f[[0, 2]] @ f[[0, 2]].T, 0.5 * img[[0, 2]] @ img[[0, 2]].T
                               + 0.5 * txt[[0, 2]] @ txt[[0, 2]].T, atol=1e-6)  # fmt: skip


def test_paired_bootstrap_interval() -> None:
    from encoders.training.multimodal import paired_bootstrap

    rng = np.random.default_rng(0)
    b = rng.uniform(size=500)
    d, lo, hi = paired_bootstrap(b + 0.1, b)
    assert d == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    noisy = b + rng.normal(0.05, 0.2, size=500)
    d, lo, hi = paired_bootstrap(noisy, b)
    assert lo < d < hi and lo > 0 and hi - lo < 0.1
    d, lo, hi = paired_bootstrap(b + rng.normal(0, 0.2, size=500), b)
    assert lo < 0 < hi  # no real difference: the interval covers 0


def test_visual_per_modality_ranks_by_each_modality() -> None:
    from encoders.training.multimodal import visual_per_modality
    from vrec_tools.eval.baselines import visual
    from vrec_tools.eval.data import Events

    ids = [f"a{i}" for i in range(6)]
    # a0 is bought; a1 looks like it, a2 reads like it, a5 has no image (never a candidate)
    img = l2_normalise(np.array([[1, 0, 0], [0.95, 0.3, 0], [0, 1, 0], [0, 0, 1],
                                 [0.3, 0.3, 0.9], [0, 0, 0]], dtype=np.float32))  # fmt: skip
    txt = l2_normalise(np.array([[1, 0], [0, 1], [1, 0.05], [0, 1], [0.2, 1], [1, 0]]))
    history = Events.from_records([("2020-01-01", "u", "a0"), ("2020-01-02", "v", "a3")], ids)
    users = ["u", "cold"]
    for w in (0.0, 0.5):
        got = visual_per_modality(history, users, img, txt, w, cutoff="2020-01-05", k=3)
        assert got["cold"] == ["a3", "a0"]  # popularity (only two items bought)
        assert got["u"][0] == "a0" and "a5" not in got["u"]
        if w == 0:
            assert got == visual(history, users, img, cutoff="2020-01-05", k=3)
            assert got["u"][1] == "a1"
        else:
            assert got["u"][1] == "a2"  # (0 + 0.999) / 2 beats a1's (0.95 + 0) / 2
