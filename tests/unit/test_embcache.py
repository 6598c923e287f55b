"""Embedding cache: sqlite round trip and embed-only-misses with the real ONNX encoder."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from encoders import ImageEncoder, ImageError, load_image
from encoders.cache import EmbeddingCache, embed_catalogue
from encoders.registry import ensure_model
from streams.settings import get_settings
from streams.util import sha256_file

FIXTURE_IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "hm_sample" / "images"


class CountingEncoder(ImageEncoder):
    """The real encoder, counting the images it is asked to embed."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.rows = 0

    def embed(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.rows += len(batch)
        return super().embed(batch)


@pytest.fixture(scope="module")
def encoder() -> CountingEncoder:
    return CountingEncoder(ensure_model(get_settings().model_dir), device="cpu", threads=2)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Six real H&M product photos copied into a scratch folder."""
    src = sorted(FIXTURE_IMAGES.glob("*.jpg"))[:6]
    assert len(src) == 6, f"fixture images missing under {FIXTURE_IMAGES}"
    out = []
    for p in src:
        dst = tmp_path / "img" / p.name
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(p, dst)
        out.append(dst)
    return out


def test_cache_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vecs = {f"h{i}": rng.standard_normal(8).astype(np.float32) for i in range(3)}
    path = tmp_path / "sub" / "emb.sqlite"
    with EmbeddingCache(path) as cache:
        assert cache.put_many("m1", vecs) == 3
        assert cache.put_many("m2", {"h0": np.ones(4, dtype=np.float32)}) == 1
        assert cache.put_many("m1", {}) == 0
    with EmbeddingCache(path) as cache:  # reopened: persisted
        got = cache.get_many("m1", ["h0", "h2", "nope"])
        assert set(got) == {"h0", "h2"}
        np.testing.assert_array_equal(got["h0"], vecs["h0"])
        np.testing.assert_array_equal(got["h2"], vecs["h2"])
        assert got["h0"].dtype == np.float32
        np.testing.assert_array_equal(cache.get_many("m2", ["h0"])["h0"], np.ones(4))
        assert cache.get_many("m3", ["h0"]) == {}
        assert cache.count("m1") == 3 and len(cache) == 4
        cache.put_many("m1", {"h0": np.zeros(8)})  # overwrite
        np.testing.assert_array_equal(cache.get_many("m1", ["h0"])["h0"], np.zeros(8))
        with pytest.raises(ValueError):
            cache.put_many("m1", {"bad": np.array([np.nan, 1.0])})
        with pytest.raises(ValueError):
            cache.put_many("m1", {"bad": np.ones((2, 2))})
    with pytest.raises(RuntimeError):
        cache.get_many("m1", ["h0"])  # closed


def test_cache_many_keys_and_threads(tmp_path: Path) -> None:
    """More keys than one SELECT takes, written by one thread while others read."""
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    keys = [f"k{i}" for i in range(1200)]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for s in range(0, len(keys), 100):
                chunk = {keys[i]: np.full(4, i, np.float32) for i in range(s, s + 100)}
                cache.put_many("m", chunk)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(20):
                got = cache.get_many("m", keys)
                for k, v in got.items():
                    assert v[0] == int(k[1:])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = cache.get_many("m", keys)
    assert len(got) == 1200 and got["k1199"][0] == 1199
    cache.close()


@pytest.mark.model
def test_embed_catalogue_embeds_only_misses(
    encoder: CountingEncoder, images: list[Path], tmp_path: Path
) -> None:
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    encoder.rows = encoder.calls = 0
    first = embed_catalogue(encoder, images[:4], cache, batch=3, progress=False)
    assert first.shape == (4, encoder.dim) and first.dtype == np.float32
    assert encoder.rows == 4 and encoder.calls == 2  # batches of 3 + 1
    direct = encoder.embed_images([load_image(p) for p in images[:4]])
    np.testing.assert_allclose(first, direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert cache.count(encoder.model_id) == 4

    # reversed order, two new images and a duplicate path: only the 2 new ones are embedded
    encoder.rows = encoder.calls = 0
    paths = [images[5], *reversed(images[:4]), images[4], images[5]]
    second = embed_catalogue(encoder, paths, cache, batch=32, progress=False)
    assert encoder.rows == 2 and encoder.calls == 1
    np.testing.assert_allclose(second[1:5], first[::-1], atol=1e-6)
    np.testing.assert_array_equal(second[0], second[6])
    assert cache.count(encoder.model_id) == 6

    # everything cached: no encoder call at all; a different model id would miss
    encoder.rows = encoder.calls = 0
    third = embed_catalogue(encoder, paths, cache, progress=False)
    assert encoder.calls == 0
    np.testing.assert_array_equal(third, second)
    assert cache.get_many("other-model", [sha256_file(images[0])]) == {}
    cache.close()


@pytest.mark.model
def test_changed_bytes_change_the_key(
    encoder: CountingEncoder, images: list[Path], tmp_path: Path
) -> None:
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    target = images[0]
    before_hash = sha256_file(target)
    before = embed_catalogue(encoder, [target], cache, progress=False)
    shutil.copyfile(images[1], target)  # same path, other picture
    after_hash = sha256_file(target)
    assert after_hash != before_hash
    encoder.rows = 0
    after = embed_catalogue(encoder, [target], cache, progress=False)
    assert encoder.rows == 1  # a miss although the path was embedded before
    assert float(before[0] @ after[0]) < 0.999
    # a renamed copy of the same bytes is a hit
    renamed = tmp_path / "renamed.jpg"
    shutil.copyfile(target, renamed)
    encoder.rows = 0
    again = embed_catalogue(encoder, [renamed], cache, progress=False)
    assert encoder.rows == 0
    np.testing.assert_array_equal(again, after)
    cache.close()


@pytest.mark.model
def test_undecodable_image(encoder: CountingEncoder, images: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    with pytest.raises(ImageError):
        embed_catalogue(encoder, [images[0], bad], cache, progress=False)
    out = embed_catalogue(encoder, [images[0], bad], cache, progress=False, errors="zero")
    assert np.linalg.norm(out[0]) == pytest.approx(1.0, abs=1e-5)
    assert not out[1].any()
    assert cache.get_many(encoder.model_id, [sha256_file(bad)]) == {}
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageError):
        embed_catalogue(encoder, [missing], cache, progress=False)
    cache.close()
