"""The model registry a worker reads: the ONNX files under the model dir, exported on demand.

:func:`ensure_model` / :func:`ensure_text_model` return the path of the image / text encoder and
export it first when it is missing. The export itself is training tooling (torch:
:mod:`encoders.training.export`, :mod:`encoders.training.text_export`); it is imported only on
that path, so a worker with its models in place never loads it.
"""

from __future__ import annotations

from pathlib import Path

from encoders.image import ONNX_FILENAME
from encoders.text import ONNX_FILENAME as TEXT_ONNX_FILENAME
from encoders.text import TOKENIZER_FILENAME


def ensure_model(model_dir: Path) -> Path:
    """Return ``model_dir/efficientnet_lite0.onnx``, exporting it first if it does not exist."""
    path = Path(model_dir) / ONNX_FILENAME
    if path.is_file():
        return path
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RuntimeError(
            f"{path} does not exist and torch is not installed to export it: "
            "install the export extras (pip install 'vrec[torch]') or copy the ONNX file there"
        ) from None
    from encoders.training.export import export_onnx  # torch: only when the file is missing

    return export_onnx(path)


def ensure_text_model(model_dir: Path) -> Path:
    """``model_dir/minilm_l6_v2.onnx``, exported first if it or its tokenizer is missing."""
    path = Path(model_dir) / TEXT_ONNX_FILENAME
    if path.is_file() and path.with_name(TOKENIZER_FILENAME).is_file():
        return path
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise RuntimeError(
            f"{path} does not exist and torch/transformers are not installed to export it: "
            "pip install 'vrec[torch]' or copy the ONNX and tokenizer files there"
        ) from None
    from encoders.training.text_export import export_onnx  # torch: only when missing

    return export_onnx(path)
