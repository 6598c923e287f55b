"""streams.catalogue: the worker's float32 mirror of the item index."""

from __future__ import annotations

import numpy as np
import pytest

from streams.catalogue import Catalogue


def test_put_and_read_back():
    cat = Catalogue()
    assert len(cat) == 0 and cat.dim == 0 and "a" not in cat
    cat.put("a", np.array([3.0, 4.0]), {"product_code": 7, "price": "0.5"})
    assert "a" in cat and len(cat) == 1 and cat.dim == 2
    assert cat.index_of("a") == 0 and cat.index_of("b") is None
    vec = cat.vector("a")
    assert vec.dtype == np.float32 and vec.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError):
        vec[0] = 1.0  # a read-only view
    assert cat.vector("b") is None
    assert cat.code_of == {"a": "7"} and cat.members == {"7": {"a"}}
    assert cat.price_of == {"a": 0.5}
    assert cat.norms(np.array([0])).tolist() == [5.0]
    assert cat.same_vector("a", np.array([3.0, 4.0])) and not cat.same_vector("a", np.ones(2))
    assert not cat.same_vector("b", np.ones(2))


def test_payload_only_item_is_not_in_the_vector_index():
    cat = Catalogue()
    cat.put("p", None, {"product_code": "c", "price": 1.0})
    assert "p" not in cat and len(cat) == 0
    assert cat.code_of == {"p": "c"} and cat.price_of == {"p": 1.0}


def test_rows_grow_and_keep_their_index():
    cat = Catalogue()
    rng = np.random.default_rng(1)
    vecs = {f"i{n}": rng.normal(size=4) for n in range(2500)}  # past two growth steps
    for i, v in vecs.items():
        cat.put(i, v, {})
    assert len(cat) == 2500
    ids, idx = cat.indices(["i2499", "ghost", "i0", "i1024"])
    assert ids == ["i2499", "i0", "i1024"]  # input order, unknown ids left out
    assert idx.tolist() == [2499, 0, 1024]
    np.testing.assert_array_equal(
        cat.rows(idx), np.stack([vecs[i] for i in ids]).astype(np.float32)
    )
    np.testing.assert_allclose(
        cat.norms(idx), [np.linalg.norm(vecs[i].astype(np.float32).astype(np.float64)) for i in ids]
    )


def test_re_upload_overwrites_in_place_and_moves_the_product_code():
    cat = Catalogue()
    cat.put("a", np.array([1.0, 0.0]), {"product_code": "x"})
    cat.put("b", np.array([0.0, 1.0]), {"product_code": "x"})
    cat.put("a", np.array([0.0, 2.0]), {"product_code": "y", "price": 2})
    assert cat.index_of("a") == 0 and len(cat) == 2
    assert cat.vector("a").tolist() == [0.0, 2.0]
    assert cat.norms(np.array([0])).tolist() == [2.0]
    assert cat.code_of["a"] == "y"
    assert cat.members["x"] == {"b"} and cat.members["y"] == {"a"}
    cat.put("a", None, {})  # a payload without a code or price changes nothing
    assert cat.code_of["a"] == "y" and cat.price_of["a"] == 2.0


def test_vector_of_another_dimension_is_refused():
    cat = Catalogue()
    cat.put("a", np.zeros(3), {})
    with pytest.raises(ValueError, match="3"):
        cat.put("b", np.zeros(4), {})
    assert "b" not in cat and len(cat) == 1
    fixed = Catalogue(dim=2)
    with pytest.raises(ValueError):
        fixed.put("a", np.zeros(3), {})


def test_zero_vector_norm_is_one_so_cosines_with_it_are_zero():
    cat = Catalogue()
    cat.put("z", np.zeros(3), {})
    cat.put("a", np.array([0.0, 0.0, 2.0]), {})
    assert cat.norms(np.array([0, 1])).tolist() == [1.0, 2.0]
    assert cat.rows_of(["a", "ghost", "z"]).tolist() == [1, -1, 0]
