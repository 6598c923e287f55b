"""ONNX Runtime image encoder: images -> L2-normalised EfficientNet-Lite0 embeddings."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from encoders.preprocess import preprocess

__all__ = ["ImageEncoder", "model_file"]

MODEL_NAME = "efficientnet_lite0"  # model_id prefix; also the ONNX file stem
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_ORT_DEFAULT_SEVERITY = 2  # WARNING: onnxruntime's own default
_QUIET_SEVERITY = 4  # FATAL only: hides the "failed to load CUDA provider" ERROR lines

#: CUDA provider options. ``prefer_nhwc``: channels-last conv kernels, 1.2x the NCHW default on
#: an H200 (fp16, batch 256: 17,247 vs 14,212 img/s), same neighbours. A build without them
#: falls back to the plain provider.
CUDA_OPTIONS = {"prefer_nhwc": "1"}
#: On CUDA every batch is run at this one size (split, last chunk zero-padded). onnxruntime's
#: CUDA convolutions re-plan whenever the input shape changes; on an H200 a pass that changed
#: the batch size cost 1-3 s, 50x the run itself, and the encode agent's batch sizes follow the
#: traffic. One shape is planned once, at start-up.
CUDA_BATCH = 32

_probe_lock = threading.Lock()
_cuda_works: bool | None = None  # None: not probed yet in this process

# The exported graph: ``pixels`` (N, 3, 224, 224) float32 -> ``embedding`` (N, 1280).
ONNX_FILENAME = f"{MODEL_NAME}.onnx"


INPUT_NAME = "pixels"


OUTPUT_NAME = "embedding"


INPUT_SIZE = 224


EMBED_DIM = 1280


NORMALISATION = "(x/255 - 0.5) / 0.5 (RGB, NCHW, [-1, 1])"


def model_file(path: str | Path) -> Path:
    """An ONNX model file: ``path`` itself, or for a training output folder (``vrec train
    classify|distill|adversarial``) the file its ``current.json`` names."""
    import json

    path = Path(path)
    if path.is_dir():
        current = path / "current.json"
        if not current.is_file():
            raise FileNotFoundError(f"{path} is a folder without current.json")
        path = path / json.loads(current.read_text())["onnx"]
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return path


def _options(threads: int, severity: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    if severity is not None:
        opts.log_severity_level = severity
    return opts


def _preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries of the nvidia-* wheels (``onnxruntime-gpu[cuda,cudnn]``)
    so the CUDA provider finds them without LD_LIBRARY_PATH; onnxruntime >= 1.21 has this."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.suppress(Exception):
            preload()


def pad_rows(batch: np.ndarray, size: int) -> np.ndarray:
    """``batch`` with zero rows appended up to ``size`` rows (unchanged if it has that many)."""
    if len(batch) >= size:
        return batch
    return np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])


def try_cuda_session(
    model: bytes, threads: int, options: Sequence[dict[str, str]] = (CUDA_OPTIONS, {})
) -> ort.InferenceSession | None:
    """Create a CUDA session with all ORT output suppressed; ``None`` if CUDA does not load.
    ``options``: provider option sets tried in turn (default: ``CUDA_OPTIONS``, then none).

    onnxruntime-gpu lists CUDAExecutionProvider even without the CUDA/cuDNN libraries and, when
    asked for it, logs a loud error (or prints an "EP Error" banner) before falling back to CPU.
    """
    if CUDA not in ort.get_available_providers():
        return None
    ort.set_default_logger_severity(_QUIET_SEVERITY)
    sess = None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _preload_cuda_libraries()
            for option_set in options:
                with contextlib.suppress(Exception):
                    sess = ort.InferenceSession(
                        model,
                        sess_options=_options(threads, _QUIET_SEVERITY),
                        providers=[(CUDA, option_set), CPU],
                    )
                    break
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
    return sess if sess is not None and CUDA in sess.get_providers() else None


class ImageEncoder:
    """Embeds images with an exported EfficientNet-Lite0 ONNX model (``encoders.training.export``)
    or a trained embedding model with the same ``pixels -> embedding`` contract.

    The input side (square, fixed) is read from the graph, so a student at 160 px works too.
    ``model_id`` is ``<name>-<sha256[:12] of the file>``; ``<name>`` is the ONNX metadata
    ``model_name`` if set (``encoders.training.distill`` / ``encoders.training.adversarial``), else
    ``efficientnet_lite0``.

    ``device``: ``"cpu"``; ``"cuda"`` (raises ``RuntimeError`` if CUDA does not load); or
    ``"auto"``: CUDA if it truly loads (probed once per process, quietly), else CPU.
    ``threads`` > 0 sets onnxruntime's intra-op thread count (0: onnxruntime decides).
    ``fixed_batch``: run every batch at this size (split, zero-padded); default
    :data:`CUDA_BATCH` on CUDA, none on CPU. Rows are independent, so padding changes nothing.

    Outputs are float32 (N, dim) rows with unit L2 norm (the ONNX graph itself is not
    normalised). One instance may be used from any thread: ``InferenceSession.run`` is
    thread-safe and the encoder holds no mutable state after construction.
    """

    model_id: str
    dim: int
    input_size: int
    providers: list[str]

    def __init__(
        self,
        onnx_path: Path,
        *,
        device: str = "auto",
        threads: int = 0,
        fixed_batch: int | None = None,
    ) -> None:
        global _cuda_works
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
        self.path = Path(onnx_path)
        try:
            model = self.path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"ONNX model not found: {self.path} (create it with "
                "`vrec export-model --model-dir DIR`)"
            ) from None
        digest = hashlib.sha256(model).hexdigest()
        self.sha256 = digest

        sess: ort.InferenceSession | None = None
        if device == "cuda":
            sess = try_cuda_session(model, threads)
            if sess is None:
                raise RuntimeError(
                    "device='cuda' but the CUDA execution provider does not load "
                    f"(available: {ort.get_available_providers()}); use device='auto' or 'cpu'"
                )
        elif device == "auto" and _cuda_works is not False:
            with _probe_lock:
                if _cuda_works is not False:
                    sess = try_cuda_session(model, threads)
                    _cuda_works = sess is not None
        if sess is None:
            sess = ort.InferenceSession(model, sess_options=_options(threads), providers=[CPU])
        self._session = sess
        self.providers = list(sess.get_providers())
        self.device = "cuda" if CUDA in self.providers else "cpu"
        # A trained model (distilled student, adversarially fine-tuned encoder) names itself in
        # its ONNX metadata; the exported EfficientNet-Lite0 file has none.
        name = sess.get_modelmeta().custom_metadata_map.get("model_name") or MODEL_NAME
        self.model_id = f"{name}-{digest[:12]}"

        inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
        self._input_name, self._output_name = inp.name, out.name
        size = inp.shape[-1]
        dim = out.shape[-1]
        if not isinstance(size, int) or not isinstance(dim, int) or inp.shape[-2] != size:
            raise ValueError(
                f"{self.path}: expected a fixed square input and output dim, got "
                f"input {inp.shape}, output {out.shape}"
            )
        self.input_size = size
        self.dim = dim
        # One input shape on CUDA (see CUDA_BATCH); ``fixed_batch`` sets it on any device.
        self.fixed_batch = fixed_batch or (CUDA_BATCH if self.device == "cuda" else None)
        if self.fixed_batch is not None and self.device == "cuda":
            self._run(np.zeros((self.fixed_batch, 3, size, size), np.float32))  # plan it now

    def __repr__(self) -> str:
        return (
            f"ImageEncoder(model_id={self.model_id!r}, dim={self.dim}, providers={self.providers})"
        )

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embed a preprocessed batch (N, 3, S, S) -> float32 (N, dim), rows L2-normalised."""
        batch = np.asarray(batch)
        expected = (3, self.input_size, self.input_size)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(
                f"batch must have shape (N, {', '.join(map(str, expected))}), got {batch.shape}"
            )
        if batch.shape[0] == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.fixed_batch is None:
            out = self._run(batch)
        else:
            out = np.concatenate(
                [
                    self._run_padded(batch[i : i + self.fixed_batch])
                    for i in range(0, len(batch), self.fixed_batch)
                ]
            )
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output_name], {self._input_name: batch})[0]

    def _run_padded(self, chunk: np.ndarray) -> np.ndarray:
        """Run ``chunk`` (at most ``fixed_batch`` rows) zero-padded to ``fixed_batch`` rows."""
        assert self.fixed_batch is not None
        return self._run(pad_rows(chunk, self.fixed_batch))[: len(chunk)]

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess (pad to square, resize, normalise) and embed PIL images."""
        return self.embed(preprocess(images, self.input_size))
