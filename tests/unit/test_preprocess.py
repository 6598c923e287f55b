"""encoders.preprocess: padding, normalisation, and rejection of bad or hostile images."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders import ImageError, load_image, pad_to_square, preprocess
from encoders.preprocess import border_colour

REPO = Path(__file__).resolve().parents[2]
_IMAGE_DIRS = (Path("/work/shared/data/hm/images"), REPO / "tests/fixtures/hm_sample/images")


# ---------------------------------------------------------------- helpers / fixtures


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR width/height of a PNG (with a valid CRC): a header-only bomb."""
    assert data[12:16] == b"IHDR"
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return data[:16] + bytes(ihdr) + crc + data[33:]


@pytest.fixture(scope="module")
def real_jpeg() -> bytes:
    """A real H&M product JPEG when available, else a synthetic photo-like JPEG."""
    for d in _IMAGE_DIRS:
        if d.is_dir():
            path = next(iter(sorted(d.glob("*/*.jpg"))), None) or next(
                iter(sorted(d.glob("*.jpg"))), None
            )
            if path is not None:
                return path.read_bytes()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:192, 0:128]
    arr = np.stack([xx * 2, yy, (xx + yy) % 256], axis=-1) + rng.integers(0, 30, (192, 128, 3))
    return _jpeg(Image.fromarray(arr.clip(0, 255).astype(np.uint8)))


def _portrait(bg: tuple[int, int, int] = (200, 10, 30)) -> Image.Image:
    """60x100 portrait image: plain background, a blue 20x40 block at (20, 30)."""
    img = Image.new("RGB", (60, 100), bg)
    img.paste((0, 0, 255), (20, 30, 40, 70))
    return img


# ---------------------------------------------------------------- pad_to_square


def test_pad_to_square_portrait_is_centred_with_border_colour() -> None:
    img = _portrait()
    sq = pad_to_square(img)
    assert sq.size == (100, 100)
    assert sq.mode == "RGB"
    arr = np.asarray(sq)
    # 40 px of padding split 20 / 20: the original now occupies columns 20..79
    assert (arr[:, :20] == (200, 10, 30)).all()
    assert (arr[:, 80:] == (200, 10, 30)).all()
    np.testing.assert_array_equal(arr[:, 20:80], np.asarray(img))
    # the blue block moved by exactly the left padding
    blue = np.argwhere((arr == (0, 0, 255)).all(axis=-1))
    assert blue[:, 1].min() == 40 and blue[:, 1].max() == 59
    assert blue[:, 0].min() == 30 and blue[:, 0].max() == 69


def test_pad_to_square_landscape_and_odd_padding() -> None:
    img = Image.new("RGB", (101, 50), (0, 255, 0))
    sq = pad_to_square(img, fill=(9, 9, 9))
    assert sq.size == (101, 101)
    arr = np.asarray(sq)
    # 51 rows of padding: 25 on top, 26 at the bottom
    assert (arr[:25] == 9).all() and (arr[25:75] == (0, 255, 0)).all() and (arr[75:] == 9).all()


def test_pad_to_square_square_unchanged_and_grayscale() -> None:
    img = Image.new("RGB", (32, 32), (1, 2, 3))
    out = pad_to_square(img)
    assert out is not img and np.array_equal(np.asarray(out), np.asarray(img))
    gray = Image.new("L", (10, 30), 77)
    sq = pad_to_square(gray)
    assert sq.mode == "L" and sq.size == (30, 30) and (np.asarray(sq) == 77).all()


def test_border_colour_is_median_of_outer_pixels() -> None:
    img = _portrait(bg=(240, 240, 240))
    img.paste((0, 0, 0), (0, 0, 3, 3))  # a few dark pixels in the corner do not move the median
    assert border_colour(img) == (240, 240, 240)
    assert np.asarray(pad_to_square(img))[50, 0].tolist() == [240, 240, 240]


# ---------------------------------------------------------------- preprocess


def test_preprocess_shape_dtype_and_range() -> None:
    imgs = [_portrait(), Image.new("RGB", (300, 200), (255, 255, 255)), Image.new("L", (5, 9), 0)]
    x = preprocess(imgs)
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    np.testing.assert_allclose(x[1], 1.0)  # white -> +1
    np.testing.assert_allclose(x[2], -1.0)  # black grayscale -> -1 on all 3 channels
    # (200, 10, 30) background of the portrait, also in the padded columns
    np.testing.assert_allclose(
        x[0, :, 112, 2], [200 / 127.5 - 1, 10 / 127.5 - 1, 30 / 127.5 - 1], atol=1e-6
    )
    # the blue block stays in the centre: padding, not cropping
    assert x[0, 2, 112, 112] > 0.9 and x[0, 0, 112, 112] < -0.9
    assert preprocess([], size=64).shape == (0, 3, 64, 64)
    assert preprocess(imgs[:1], size=96).shape == (1, 3, 96, 96)


# ---------------------------------------------------------------- load_image: good inputs


def test_load_image_bytes_str_and_path_agree(tmp_path: Path, real_jpeg: bytes) -> None:
    p = tmp_path / "a.jpg"
    p.write_bytes(real_jpeg)
    a, b, c = load_image(real_jpeg), load_image(str(p)), load_image(p)
    assert a.mode == "RGB" and a.size[0] > 0
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1", "I;16", "LA"])
def test_load_image_converts_modes_to_rgb(mode: str) -> None:
    base = _portrait()
    img = base.convert(mode) if mode != "I;16" else Image.new("I;16", (60, 100), 50000)
    fmt_bytes = _jpeg(img) if mode == "CMYK" else _png(img)
    out = load_image(fmt_bytes)
    assert out.mode == "RGB" and out.size == (60, 100)
    if mode == "CMYK":  # colour survives the CMYK round trip
        r, g, b = np.asarray(out)[5, 5].astype(int)
        assert r > 150 and g < 60 and b < 80
    if mode == "I;16":  # 16-bit data is rescaled, not clipped to white
        assert np.asarray(out).max() == 255


def test_load_image_rgba_composited_on_white() -> None:
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent black
    img.paste((10, 20, 30, 255), (5, 5, 15, 15))
    out = np.asarray(load_image(_png(img)))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[10, 10].tolist() == [10, 20, 30]


def test_load_image_applies_exif_orientation() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    out = load_image(_jpeg(img, exif=exif.tobytes()))
    assert out.size == (20, 40)
    arr = np.asarray(out).astype(int)
    assert arr[2, 10, 2] > 200 and arr[2, 10, 0] < 60  # the left band is now on top


# ---------------------------------------------------------------- load_image: hostile inputs


def _reject(source: object, match: str, **kw: object) -> ImageError:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rejection must not leak warnings either
        with pytest.raises(ImageError, match=match) as info:
            load_image(source, **kw)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    return info.value


def test_rejects_random_bytes() -> None:
    data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    _reject(data, "not a decodable image")


def test_rejects_empty_bytes_and_empty_file(tmp_path: Path) -> None:
    _reject(b"", "empty")
    (tmp_path / "e.jpg").write_bytes(b"")
    _reject(tmp_path / "e.jpg", "empty")


def test_rejects_truncated_jpeg(real_jpeg: bytes) -> None:
    _reject(real_jpeg[: len(real_jpeg) // 2], "truncated")
    _reject(real_jpeg[:200], "truncated")  # cut inside the header


def test_rejects_corrupt_png_data() -> None:
    data = bytearray(_png(Image.fromarray(np.arange(3000, dtype=np.uint8).reshape(50, 60))))
    idat = data.index(b"IDAT")
    data[idat + 10 : idat + 40] = b"\xff" * 30
    _reject(bytes(data), "cannot be decoded: OSError: broken data stream")


@pytest.mark.parametrize(
    "size",
    [
        (50_000, 50_000),  # beyond PIL's own hard limit: DecompressionBombError at open
        (10_000, 10_000),  # PIL would only warn (DecompressionBombWarning)
        (8_000, 8_000),  # under PIL's limits, over ours (40 MP)
    ],
)
def test_rejects_decompression_bomb_from_header(size: tuple[int, int]) -> None:
    small = _png(Image.new("L", (8, 8), 255))
    bomb = _patch_png_size(small, *size)
    assert len(bomb) < 200
    err = _reject(bomb, "decompression bomb")
    assert "pixels" in str(err)


def test_max_pixels_is_checked_before_decoding(real_jpeg: bytes) -> None:
    _reject(real_jpeg, r"decompression bomb: \d+x\d+ = \d+ pixels > limit 1000", max_pixels=1000)


def test_rejects_zero_size_image() -> None:
    bad = _patch_png_size(_png(Image.new("L", (8, 8))), 0, 8)
    _reject(bad, "zero size|corrupt header|not a decodable")


def test_rejects_oversized_bytes_and_file(tmp_path: Path, real_jpeg: bytes) -> None:
    limit = len(real_jpeg) - 1
    _reject(real_jpeg, f"too large: {len(real_jpeg)} bytes > limit {limit}", max_bytes=limit)
    p = tmp_path / "big.jpg"
    p.write_bytes(real_jpeg)
    _reject(p, "too large", max_bytes=limit)
    assert load_image(p, max_bytes=len(real_jpeg)).mode == "RGB"  # exactly at the limit is ok


def test_rejects_missing_path_directory_and_text_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "x.jpg"
    _reject(missing, "image file not found: .*x.jpg")
    _reject(str(missing), "image file not found")
    _reject(tmp_path, "not a regular file")
    txt = tmp_path / "notes.txt"
    txt.write_text("this is not an image\n" * 20)
    _reject(txt, "not a decodable image")
    _reject(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a decodable image")


def test_rejects_wrong_type() -> None:
    with pytest.raises(TypeError):
        load_image(123)  # type: ignore[arg-type]
