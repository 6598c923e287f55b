"""Image encoders: safe image loading, preprocessing and the ONNX EfficientNet-Lite0 encoder.

Inference only: ``ensure_model`` (:mod:`encoders.registry`) exports the ONNX file with
:mod:`encoders.training.export` (torch) only when it is missing.
"""

from __future__ import annotations

from encoders.image import ImageEncoder, model_file
from encoders.preprocess import ImageError, load_image, pad_to_square, preprocess
from encoders.registry import ensure_model

__all__ = [
    "ImageEncoder",
    "ImageError",
    "model_file",
    "ensure_model",
    "load_image",
    "pad_to_square",
    "preprocess",
]
