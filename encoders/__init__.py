"""Image encoders: safe image loading, preprocessing and the ONNX EfficientNet-Lite0 encoder.

``ensure_model`` / ``export_onnx`` are imported lazily so that ``python -m encoders.export``
runs cleanly; torch itself is only imported when an export actually happens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .image import ImageEncoder, model_file
from .preprocess import ImageError, load_image, pad_to_square, preprocess

if TYPE_CHECKING:
    from .export import ensure_model, export_onnx

__all__ = [
    "ImageEncoder",
    "ImageError",
    "model_file",
    "ensure_model",
    "export_onnx",
    "load_image",
    "pad_to_square",
    "preprocess",
]


def __getattr__(name: str) -> Any:
    if name in ("ensure_model", "export_onnx"):
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
