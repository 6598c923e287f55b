"""Product classification heads at run time (onnxruntime + numpy; no torch).

:class:`CategoryClassifier` loads a head that :mod:`encoders.training.classify` exported: a softmax
ONNX graph over the image embedding plus the ``<sha12>.labels.json`` list beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "CategoryClassifier", "labels_path"]

INPUT_NAME = "embedding"


OUTPUT_NAME = "probs"


def labels_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.stem + ".labels.json")


class CategoryClassifier:
    """ONNX softmax head at run time (onnxruntime + numpy; no torch).

    ``onnx_path`` is a head's ``.onnx`` file or a ``classify-<target>`` folder (then its
    ``current.json`` names the file). Labels come from the ``<sha12>.labels.json`` beside it.
    """

    def __init__(self, onnx_path: str | Path, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        from encoders.image import model_file

        path = model_file(onnx_path)
        self.path = path
        meta = json.loads(labels_path(path).read_text())
        self.labels: list[str] = list(meta["labels"])
        self.target: str = meta.get("target", "")
        # the upload label it fills: "category" (heads exported before labels had names)
        # or an attribute such as "colour"
        self.field: str = meta.get("field") or "category"
        self.model_id: str = meta.get("model_id", path.stem)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path), opts, providers=list(providers or ["CPUExecutionProvider"])
        )
        out_dim = self._session.get_outputs()[0].shape[-1]
        if isinstance(out_dim, int) and out_dim != len(self.labels):
            raise ValueError(f"{path}: {out_dim} outputs but {len(self.labels)} labels")
        self.dim = self._session.get_inputs()[0].shape[-1]

    def __repr__(self) -> str:
        return f"CategoryClassifier(model_id={self.model_id!r}, classes={len(self.labels)})"

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities float32 (N, C); a single 1-d embedding is treated as N = 1."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise ValueError(f"embeddings must be (N, dim) or (dim,), got shape {x.shape}")
        if len(x) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x)})[0]

    def predict(self, embeddings: np.ndarray) -> list[tuple[str, float]]:
        """``(label, confidence)`` of the most probable class for each embedding."""
        probs = self.predict_proba(embeddings)
        best = probs.argmax(axis=1)
        return [(self.labels[j], float(probs[i, j])) for i, j in enumerate(best.tolist())]

    def topk(self, embeddings: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(label, confidence)`` pairs per embedding, best first."""
        probs = self.predict_proba(embeddings)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [(self.labels[j], float(probs[i, j])) for j in row]
            for i, row in enumerate(order.tolist())
        ]
