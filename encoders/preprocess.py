"""Safe image loading and EfficientNet-Lite preprocessing.

``load_image`` is the only place untrusted image bytes are decoded: it bounds the file size,
checks the pixel count from the header before decoding, and turns every decoder failure into
:class:`ImageError`. ``preprocess`` pads portrait product photos to a square with their border
colour (no centre crop, so whole garments are kept), resizes with bicubic interpolation and
normalises to ``(x / 255 - 0.5) / 0.5``, i.e. to [-1, 1].
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "load_image",
    "pad_to_square",
    "preprocess",
]

DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000
#: Formats PIL may try; anything else is rejected without running its decoder.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Resampling filter used by :func:`preprocess`.
RESAMPLE = Image.Resampling.BICUBIC
_ALPHA_BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """An image that cannot or must not be decoded; ``str(err)`` says why."""


def _read_source(source: bytes | str | Path, max_bytes: int) -> tuple[bytes, str]:
    """Return the raw bytes of ``source`` and a short label for error messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = "image data"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        label = f"image file {str(path)!r}"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageError(f"image file not found: {path}") from None
        except OSError as exc:
            raise ImageError(f"cannot stat image file {path}: {exc}") from None
        if not path.is_file():
            raise ImageError(f"not a regular file: {path}")
        if size > max_bytes:
            raise ImageError(f"{label} is too large: {size} bytes > limit {max_bytes}")
        try:
            with path.open("rb") as fh:
                data = fh.read(max_bytes + 1)  # the file may grow after stat()
        except OSError as exc:
            raise ImageError(f"cannot read image file {path}: {exc}") from None
    else:
        raise TypeError(f"source must be bytes, str or Path, not {type(source).__name__}")
    if not data:
        raise ImageError(f"{label} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"{label} is too large: {len(data)} bytes > limit {max_bytes}")
    return data, label


def read_image_bytes(source: bytes | str | Path, max_bytes: int = 10 * 2**20) -> bytes:
    """The raw bytes of an image source, with the same size/existence checks as load_image."""
    return _read_source(source, max_bytes)[0]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grayscale: rescale to 8 bit rather than clip at 255.
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / hi if hi > 255.0 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, _ALPHA_BACKGROUND)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX ...


def _decode_error(label: str, exc: Exception, what: str) -> ImageError:
    """Map a decoder exception to an ImageError, calling out truncated data."""
    msg = str(exc)
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        return ImageError(f"{label} is truncated: {msg or type(exc).__name__}")
    return ImageError(f"{label} {what}: {type(exc).__name__}: {msg}")


def load_image(
    source: bytes | str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``source`` (bytes or a file path) into an RGB image with EXIF orientation applied.

    Raises :class:`ImageError` for a missing or unreadable file, data over ``max_bytes``,
    an image over ``max_pixels`` (checked from the header before any pixel data is decoded),
    unknown/undecodable/truncated data and zero-size images. Multi-frame images yield frame 0.
    """
    data, label = _read_source(source, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)  # header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label} rejected as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{label} is not a decodable image (supported: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Exception as exc:
        raise _decode_error(label, exc, "has a corrupt header") from None

    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{label} has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{label} rejected as a decompression bomb: {width}x{height} = "
            f"{width * height} pixels > limit {max_pixels}"
        )
    try:
        img.load()
    except Exception as exc:
        raise _decode_error(label, exc, "cannot be decoded") from None

    with contextlib.suppress(Exception):  # a malformed EXIF block must not lose the image
        img = ImageOps.exif_transpose(img) or img
    try:
        return _to_rgb(img)
    except Exception as exc:
        raise ImageError(f"{label}: cannot convert mode {img.mode} to RGB: {exc}") from None


def border_colour(img: Image.Image) -> tuple[int, ...]:
    """Per-channel median of the outermost rows and columns of ``img``."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]], axis=0)
    return tuple(int(v) for v in np.median(edge, axis=0).round())


def pad_to_square(img: Image.Image, fill: int | tuple[int, ...] | None = None) -> Image.Image:
    """Pad the short side of ``img`` so it is square, keeping the content centred.

    ``fill`` defaults to :func:`border_colour`, so a product photo on a plain background is
    extended with that background. A square image is returned unchanged (a copy).
    """
    width, height = img.size
    if width == height:
        return img.copy()
    side = max(width, height)
    if fill is None:
        fill = border_colour(img)
    if isinstance(fill, tuple) and len(fill) == 1:
        fill = fill[0]
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas


def preprocess(images: Sequence[Image.Image], size: int = 224) -> np.ndarray:
    """Turn images into an EfficientNet-Lite batch: float32 (N, 3, size, size) in [-1, 1].

    Each image is converted to RGB, padded to a square with :func:`pad_to_square`, resized to
    ``size`` x ``size`` with bicubic interpolation (PIL, antialiased when shrinking), then
    normalised as ``(x / 255 - 0.5) / 0.5``.
    """
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        square = pad_to_square(_to_rgb(img))
        if square.size != (size, size):
            square = square.resize((size, size), RESAMPLE)
        out[i] = np.asarray(square, dtype=np.float32).transpose(2, 0, 1)
    out *= 1.0 / 127.5
    out -= 1.0
    return out
