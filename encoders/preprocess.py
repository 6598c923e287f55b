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
import os
import stat
import threading
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "PixelBudget",
    "confine",
    "image_mime",
    "load_image",
    "read_confined",
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


def unavailable(max_bytes: int) -> ImageError:
    """The one reason for every image_path that cannot be served: outside the image roots,
    missing, not a regular file, empty, unreadable or over ``max_bytes`` (whether a file exists,
    and its size, are not told)."""
    return ImageError(
        f"image_path names no readable image file of at most {max_bytes} bytes "
        "inside the image root"
    )


def confine(name: str | Path, roots: Sequence[Path], max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """The real path of image file ``name`` if it lies inside one of ``roots``.

    A relative ``name`` is taken under ``roots[0]``; symlinks and ``..`` are resolved first, so
    neither can leave the roots. Raises :func:`unavailable` otherwise (also for a missing file).
    """
    path = Path(name)
    if not path.is_absolute():
        path = roots[0] / path
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise unavailable(max_bytes) from None
    for root in roots:
        try:
            if real.is_relative_to(root.resolve(strict=True)):
                return real
        except (OSError, RuntimeError):
            continue
    raise unavailable(max_bytes)


def _opened_path(fd: int) -> Path | None:
    """The path the kernel has for an open file descriptor (Linux); None elsewhere."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def read_confined(name: str | Path, roots: Sequence[Path], max_bytes: int) -> bytes:
    """The bytes of image file ``name``, confined to ``roots`` (see :func:`confine`).

    The file is opened without following a final symlink and checked again after opening (the
    kernel's path of the open file, a regular file, at most ``max_bytes``), so a link or folder
    swapped in after the check cannot make it read another file. Every failure is the same
    :func:`unavailable` error.
    """
    real = confine(name, roots, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise unavailable(max_bytes) from None
    try:
        st = os.fstat(fd)
        opened = _opened_path(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or not 0 < st.st_size <= max_bytes
            or (opened is not None and opened != real)
        ):
            raise unavailable(max_bytes)
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may grow after fstat()
    except OSError:
        raise unavailable(max_bytes) from None
    finally:
        os.close(fd)
    if not data or len(data) > max_bytes:
        raise unavailable(max_bytes)
    return data


class PixelBudget:
    """At most ``limit`` pixels decoded at once across threads, granted in arrival order.

    An image over the limit waits until nothing else is decoding and is then decoded alone, so
    every image is decoded eventually.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most pixels held at once (for tests and measurements)
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` (at most ``limit``) for the duration of the block."""
        need = max(0, min(int(pixels), self.limit))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while self._queue[0] is not ticket or self.used + need > self.limit:
                self._cond.wait()
            self._queue.popleft()
            self.used += need
            self.peak = max(self.peak, self.used)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.used -= need
                self._cond.notify_all()


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


def _open(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Parse the header of image ``data`` (no pixels decoded) and check its size."""
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
    return img


def _reduce(img: Image.Image, max_side: int) -> Image.Image:
    """``img`` shrunk by an integer factor (box filter) to a long side in
    [max_side, 2 * max_side) when it is at least twice ``max_side``; else ``img``."""
    factor = max(img.size) // max_side
    if factor < 2:
        return img
    if img.mode not in ("L", "RGB", "RGBA", "LA", "I", "F", "CMYK", "YCbCr", "I;16"):
        img = _to_rgb(img)
    return img.reduce(factor)


def load_image(
    source: bytes | str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    budget: PixelBudget | None = None,
) -> Image.Image:
    """Decode ``source`` (bytes or a file path) into an RGB image with EXIF orientation applied.

    Raises :class:`ImageError` for a missing or unreadable file, data over ``max_bytes``,
    an image over ``max_pixels`` (checked from the header before any pixel data is decoded),
    unknown/undecodable/truncated data and zero-size images. Multi-frame images yield frame 0.

    ``max_side``: an image with a long side of at least twice this is decoded reduced (JPEG:
    DCT scaling with ``draft``, before decoding; other formats: ``reduce`` right after) to a
    long side in [max_side, 2 * max_side). ``budget``: the pixels decoded at full size are held
    from ``budget`` while decoding, so threads sharing it bound their decoded pixels together.
    """
    data, label = _read_source(source, max_bytes)
    img = _open(data, label, max_pixels)
    if max_side is not None and img.format == "JPEG" and max(img.size) >= 2 * max_side:
        scale = max(img.size) / max_side
        with contextlib.suppress(Exception):  # draft picks a DCT scale keeping >= the size
            img.draft("RGB", (max(1, int(img.width / scale)), max(1, int(img.height / scale))))
    hold = budget.hold(img.width * img.height) if budget is not None else contextlib.nullcontext()
    with hold:
        try:
            img.load()
        except Exception as exc:
            raise _decode_error(label, exc, "cannot be decoded") from None
        if max_side is not None:
            try:
                img = _reduce(img, max_side)
            except Exception as exc:
                raise ImageError(f"{label}: cannot reduce mode {img.mode}: {exc}") from None
    with contextlib.suppress(Exception):  # a malformed EXIF block must not lose the image
        img = ImageOps.exif_transpose(img) or img
    try:
        return _to_rgb(img)
    except Exception as exc:
        raise ImageError(f"{label}: cannot convert mode {img.mode} to RGB: {exc}") from None


def image_mime(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The MIME type of image ``data`` after decoding it (small: JPEGs at 1/8 scale).

    Raises :class:`ImageError` if it is not a decodable image of an allowed format.
    """
    img = _open(data, "image data", max_pixels)
    fmt = img.format or ""
    if fmt == "JPEG":
        with contextlib.suppress(Exception):
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
    try:
        img.load()
    except Exception as exc:
        raise _decode_error("image data", exc, "cannot be decoded") from None
    mime = Image.MIME.get(fmt)
    if mime is None:
        raise ImageError(f"image data has no known MIME type ({fmt or 'unknown format'})")
    return mime


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
