"""ONNX variants of the EfficientNet-Lite0 encoder, made from the fp32 export, plus their check.

Variants (``model_dir/efficientnet_lite0.<name>.onnx``, each with a ``.json`` sidecar):

``opt``
    fp32 graph after onnxruntime's offline optimisation (constant folding, Pad+Conv and
    Conv+Clip fusion), saved at ``ORT_ENABLE_EXTENDED`` so the file stays portable; the
    hardware-specific NCHWc layout rewrite (``ORT_ENABLE_ALL``) is applied again at load time
    by every session. Same maths as fp32 (identical outputs); for this small model it saves
    only ~10-30 ms of session start-up and runs at the fp32 speed.
``int8``
    Static QDQ quantisation: per-channel symmetric int8 weights, uint8 activations calibrated
    (MinMax) on 128 real catalogue images, after onnxruntime's quantisation pre-processing.
    The 8 most quantisation-sensitive convs (:data:`INT8_FP32_NODES`, mostly the 112x112 stem
    and blocks 0-1) stay float32. onnxruntime fuses the Q/DQ pairs into ``QLinearConv`` at load
    time. This is the int8 method we keep (see below).
``int8-dynamic``
    Dynamic quantisation (int8 weights, activations quantised per batch at run time;
    ``ConvInteger``). Kept only so the benchmark can show why it is not the chosen one.
``fp16``
    float16 weights and activations with float32 input/output (``keep_io_types``), made with
    ``onnxruntime.transformers.float16``. Meant for the CUDA provider: the CPU provider has
    few fp16 kernels and falls back through Cast nodes.

Choice of int8 method (2 cores of an AVX-512 VNNI AMD EPYC shared with other jobs, load
average 2-5; recall@10 of the fp32 neighbours). Exploration on 600 held-out H&M images:
static QDQ per-channel with every conv int8 ran 2.0-2.6x the fp32 images/s at recall 0.867;
with the 8 sensitive convs in fp32, ~1.6-2.3x at 0.939. MinMax, Entropy and Percentile
(99.9 / 99.99 / 99.999) calibration were within 0.01 of each other (Percentile 99.999 best by
0.005, 7x slower to calibrate); symmetric int8 activations were slightly worse. Dynamic
quantisation (``ConvInteger``) was 3-5x *slower* than fp32 at recall 0.56-0.60. So ``int8``
is static QDQ. ``vrec bench encoder`` (2,000-image catalogue): int8 static 1.3-1.4x (batch 1)
and 1.8-2.9x (batch 32) of ORT fp32 at recall 0.930; with ``allow_spinning=0`` 1.85-2.6x.
No int8 setting tried reached recall@10 >= 0.99; fp16 does (0.9985 on the 200-image
fixture) but is only fast on a GPU.

:func:`neighbour_agreement` is the quality check for any variant: the mean recall@k of the
reference (fp32) top-k cosine neighbours, self excluded.

torch is not needed here; ``onnx`` is (``vrec[torch]``), and onnxruntime's quantisation and
transformers sub-packages, which ship with onnxruntime.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.image import INPUT_NAME, MODEL_NAME, ONNX_FILENAME
from encoders.preprocess import load_image, preprocess
from encoders.registry import ensure_model
from streams.util import sha256_file, write_atomic

__all__ = [
    "INT8_FP32_NODES",
    "VARIANTS",
    "build_variant",
    "calibration_batch",
    "default_image_root",
    "ensure_variant",
    "list_images",
    "neighbour_agreement",
    "variant_path",
]

#: Variant name -> one-line description (``fp32`` is the export itself).
VARIANTS: dict[str, str] = {
    "fp32": "torch export, float32",
    "opt": "fp32, onnxruntime offline-optimised graph (ORT_ENABLE_EXTENDED)",
    "int8": "static QDQ int8: per-channel int8 weights, uint8 activations (MinMax calibration)",
    "int8-dynamic": "dynamic int8 (ConvInteger), activations quantised at run time",
    "fp16": "float16 weights/activations, float32 I/O (for CUDA)",
}
#: Conv nodes the ``int8`` variant keeps in float32. Measured one at a time (only that conv
#: quantised, mean 1 - cosine to fp32 on 64 held-out H&M images): the stem conv (0.099) and
#: block 0's depthwise conv (0.071) are ~100x worse than any layer after block 1 (<= 3e-4);
#: block 1 (0.005-0.006), then block 2's expand, block 15's depthwise and the block 0/1
#: projections (~6e-4) follow. Keeping these 8 in fp32 raised recall@10 vs fp32 from 0.867
#: (everything int8) to 0.939 on 600 images while staying ~2x faster than fp32 on CPU.
#: Keeping more (14, 20, 28 layers) did not raise recall further and cost speed.
INT8_FP32_NODES = (
    "/_conv_stem/Conv",
    "/_blocks.0/_depthwise_conv/Conv",
    "/_blocks.1/_expand_conv/Conv",
    "/_blocks.1/_depthwise_conv/Conv",
    "/_blocks.2/_expand_conv/Conv",
    "/_blocks.15/_depthwise_conv/Conv",
    "/_blocks.0/_project_conv/Conv",
    "/_blocks.1/_project_conv/Conv",
)
CALIBRATION_IMAGES = 128
CALIBRATION_SEED = 4
_REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- images


def default_image_root() -> Path | None:
    """A directory with ``items.csv`` + ``images/``: $VREC_HM_DIR, /work/shared/data/hm, or
    the repository's ``tests/fixtures/hm_sample``; ``None`` if none exists."""
    candidates = [
        os.environ.get("VREC_HM_DIR"),
        "/work/shared/data/hm",
        str(_REPO / "tests" / "fixtures" / "hm_sample"),
    ]
    for c in candidates:
        if c and (Path(c) / "items.csv").is_file():
            return Path(c)
    return None


def list_images(items_csv: Path | None = None, images: Path | None = None) -> list[Path]:
    """Image paths from an items CSV (column ``image_path``, relative to the CSV's directory)
    or every ``*.jpg``/``*.png`` under ``images``; only files that exist, in a stable order."""
    if items_csv is not None:
        root = Path(items_csv).parent
        with Path(items_csv).open(newline="") as fh:
            paths = [root / r["image_path"] for r in csv.DictReader(fh) if r.get("image_path")]
        return [p for p in paths if p.is_file()]
    if images is not None:
        exts = {".jpg", ".jpeg", ".png", ".webp"}
        return sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in exts)
    root = default_image_root()
    if root is None:
        raise FileNotFoundError(
            "no images: pass items_csv/images, or set VREC_HM_DIR to a directory with items.csv"
        )
    return list_images(items_csv=root / "items.csv")


def calibration_batch(
    paths: Sequence[Path] | None = None, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED
) -> tuple[np.ndarray, list[Path]]:
    """Preprocessed (n, 3, 224, 224) batch of ``n`` images sampled (seeded) from ``paths``
    (default: :func:`list_images`), and the paths used."""
    pool = list(paths) if paths is not None else list_images()
    picked = random.Random(seed).sample(pool, min(n, len(pool)))
    if not picked:
        raise ValueError("calibration needs at least one image")
    return preprocess([load_image(p) for p in picked]), picked


# ---------------------------------------------------------------- builders


def variant_path(model_dir: Path, name: str) -> Path:
    """``model_dir/efficientnet_lite0.onnx`` for fp32, else ``efficientnet_lite0.<name>.onnx``."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if name == "fp32":
        return Path(model_dir) / ONNX_FILENAME
    return Path(model_dir) / f"{MODEL_NAME}.{name}.onnx"


def _optimise(src: Path, dst: Path, level: str = "extended") -> None:
    """Save onnxruntime's optimised graph of ``src`` to ``dst`` (CPU provider)."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])


class _BatchReader:
    """onnxruntime ``CalibrationDataReader`` over a preprocessed array, ``batch`` rows a time."""

    def __init__(self, x: np.ndarray, batch: int = 16) -> None:
        self._x, self._batch = x, batch
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._chunks, None)
        return None if chunk is None else {INPUT_NAME: np.ascontiguousarray(chunk)}

    def rewind(self) -> None:
        starts = range(0, len(self._x), self._batch)
        self._chunks: Iterator[np.ndarray] = (self._x[i : i + self._batch] for i in starts)


def _quant_ready(src: Path, dst: Path) -> None:
    """onnxruntime's quantisation pre-processing (shape inference, basic graph optimisation:
    the dynamic Pad sub-graphs fold away and Pad fuses into Conv), the quantiser's input."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))


def _check_node_names(model: Path, names: Sequence[str]) -> None:
    """Raise if a node meant to stay fp32 is not in ``model`` (a different export would
    otherwise be quantised whole, silently losing accuracy)."""
    import onnx

    present = {n.name for n in onnx.load(str(model)).graph.node}
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"nodes to keep in fp32 not found in {model.name}: {missing}")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs one INFO line per tensor on the root logger; keep those
    out of an application's INFO log while a variant is built."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _build_int8_static(src: Path, dst: Path, calib: np.ndarray, **overrides: Any) -> dict:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    settings: dict[str, Any] = {
        "nodes_to_exclude": list(INT8_FP32_NODES),
        "per_channel": True,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "calibrate_method": CalibrationMethod.MinMax,
        "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False},
    }
    settings.update(overrides)
    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        _quant_ready(src, pre)
        _check_node_names(pre, settings["nodes_to_exclude"])
        quantize_static(
            str(pre),
            str(dst),
            _BatchReader(calib),
            quant_format=QuantFormat.QDQ,
            **settings,
        )
    finally:
        pre.unlink(missing_ok=True)
    return {
        "method": "quantize_static QDQ",
        "fp32_nodes": settings["nodes_to_exclude"],
        "per_channel": settings["per_channel"],
        "activation_type": str(settings["activation_type"]),
        "weight_type": str(settings["weight_type"]),
        "calibrate_method": str(settings["calibrate_method"]),
    }


def _build_int8_dynamic(src: Path, dst: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        _quant_ready(src, pre)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QUInt8, per_channel=False)
    finally:
        pre.unlink(missing_ok=True)
    return {"method": "quantize_dynamic", "weight_type": "QUInt8", "per_channel": False}


def _build_fp16(src: Path, dst: Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"method": "onnxruntime.transformers.float16", "keep_io_types": True}


def build_variant(
    src: Path,
    dst: Path,
    name: str,
    *,
    calibration: np.ndarray | None = None,
    **overrides: Any,
) -> Path:
    """Build variant ``name`` of the fp32 model ``src`` into ``dst`` (atomically) + sidecar.

    ``calibration``: preprocessed images for ``int8`` (default: :func:`calibration_batch`).
    ``overrides`` go to ``quantize_static`` (for experiments).
    """
    src, dst = Path(src), Path(dst)
    info: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)  # some writers refuse to overwrite
        if name == "opt":
            _optimise(src, tmp, "extended")
            info.update(method="onnxruntime offline optimisation", level="ORT_ENABLE_EXTENDED")
        elif name == "int8":
            calib = calibration
            if calib is None:
                calib, picked = calibration_batch()
                info["calibration_images"] = [p.name for p in picked]
            info.update(_build_int8_static(src, tmp, calib, **overrides))
            info["calibration_count"] = len(calib)
        elif name == "int8-dynamic":
            info.update(_build_int8_dynamic(src, tmp))
        elif name == "fp16":
            info.update(_build_fp16(src, tmp))
        else:
            raise ValueError(f"cannot build variant {name!r}")

    with _quiet_root_logger():
        write_atomic(dst, write)
    digest = sha256_file(dst)
    meta = {
        "model_id": f"{MODEL_NAME}-{digest[:12]}",
        "variant": name,
        "description": VARIANTS[name],
        "source": src.name,
        "source_sha256": sha256_file(src),
        "sha256": digest,
        **info,
    }
    write_atomic(
        dst.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n")
    )
    return dst


def ensure_variant(model_dir: Path, name: str, *, calibration: np.ndarray | None = None) -> Path:
    """Path of variant ``name`` in ``model_dir``, building it (and the fp32 export) if missing
    or if its sidecar says it was made from a different fp32 file."""
    model_dir = Path(model_dir)
    src = ensure_model(model_dir)
    dst = variant_path(model_dir, name)
    if name == "fp32":
        return src
    sidecar = dst.with_suffix(".json")
    if dst.is_file() and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except ValueError:
            meta = {}
        if meta.get("source_sha256") == sha256_file(src) and meta.get("sha256") == sha256_file(dst):
            return dst
    return build_variant(src, dst, name, calibration=calibration)


# ---------------------------------------------------------------- quality


def top_k(x: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Indices of each row's k nearest rows by cosine (self excluded), as an (n, k) array."""
    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        sims = x[start : start + block] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        out[start : start + block] = np.argpartition(-sims, k, axis=1)[:, :k]
    return out


def neighbour_agreement(ref: np.ndarray, other: np.ndarray, k: int = 10) -> float:
    """Mean recall@k of ``ref``'s top-k cosine neighbours (self excluded) within ``other``'s
    top-k, over all rows. 1.0: every item keeps exactly the same k neighbours."""
    ref, other = np.asarray(ref), np.asarray(other)
    if ref.shape[0] != other.shape[0] or ref.ndim != 2 or other.ndim != 2:
        raise ValueError(f"need two (n, d) arrays with the same n, got {ref.shape}, {other.shape}")
    n = ref.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} rows, got {n}")
    a, b = top_k(ref, k), top_k(other, k)
    hits = sum(len(set(ra.tolist()) & set(rb.tolist())) for ra, rb in zip(a, b))
    return hits / (n * k)
