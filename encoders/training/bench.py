"""``vrec bench encoder``: encoder variants side by side, images/s and neighbour agreement.

Rows (all in one process, timed in interleaved rounds so that a change in machine load hits
every row alike):

- ``torch eager fp32``: the PyTorch module the ONNX file was exported from
  (``torch.set_num_threads`` = ``--threads``), CPU.
- ``ORT fp32``: the exported model, onnxruntime CPU provider at ``ORT_ENABLE_ALL`` (this
  includes the NCHWc layout rewrite). The baseline of every ``x fp32`` column.
- ``ORT fp32 optimised graph``: the ``opt`` variant (offline-optimised file).
- ``ORT int8 static QDQ`` / ``ORT int8 dynamic``: the ``int8`` / ``int8-dynamic`` variants.
- ``ORT fp32, no spin-wait`` / ``ORT int8 static QDQ, no spin-wait``: the same files with
  ``session.intra_op.allow_spinning=0``. With more runnable threads than cores (other jobs,
  the decode pool), spinning pool threads burn the time slices their peers need.
- ``ORT fp32 CUDA iobinding`` / ``ORT fp16 CUDA iobinding`` (and ``torch eager fp32/fp16
  CUDA``): only where the CUDA provider really loads (onnxruntime-gpu + CUDA libraries); the
  input is bound from host memory per batch and the output copied back, so transfers are
  included. ``ORT fp16 CUDA, input on GPU`` (and its NCHW twin, without ``prefer_nhwc``): the
  batches are uploaded once before timing, so the row times the model alone (output still
  copied back). CUDA rows also run at ``--gpu-batch`` (default 256), in an extra column; each
  batch size has its own session (see :func:`_ort_cuda_row`).
  CPU-only runs print one line saying these rows were skipped.
- ``end-to-end files->embedding (...)``: image files -> :func:`encoders.load_image` on a
  thread pool (``--threads`` workers, as the encode agent's decode pool) -> preprocess ->
  :class:`encoders.ImageEncoder`, batch 32, for ORT fp32 and int8 (fp16 on CUDA).

Model rows are timed at batch 1 and 32 over the same ``--n`` real images, preprocessed once
up front; one warm-up call per row and batch size is excluded. ``recall@10``: mean recall of
the ORT fp32 top-10 cosine neighbours (self excluded) among ``--catalogue`` images, none of
them used to calibrate int8 (:func:`encoders.training.variants.neighbour_agreement`).

Usage: ``vrec bench encoder [--items CSV | --images DIR] [--n 256] [--catalogue 2000]
[--threads T] [--device auto|cpu|cuda] [--gpu-batch 256] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from encoders.image import CUDA_OPTIONS, INPUT_NAME, MODEL_NAME, OUTPUT_NAME, pad_rows
from encoders.preprocess import load_image, preprocess
from encoders.training import variants as V
from streams.util import sha256_file

__all__ = ["ROWS", "add_args", "main", "run", "run_bench"]

ROW_TORCH = "torch eager fp32"
ROW_FP32 = "ORT fp32"
ROW_OPT = "ORT fp32 optimised graph"
ROW_INT8 = "ORT int8 static QDQ"
ROW_DYN = "ORT int8 dynamic"
ROW_FP32_NOSPIN = "ORT fp32, no spin-wait"
ROW_INT8_NOSPIN = "ORT int8 static QDQ, no spin-wait"
ROW_TORCH_CUDA = "torch eager fp32 CUDA"
ROW_CUDA_FP32 = "ORT fp32 CUDA iobinding"
ROW_CUDA_FP16 = "ORT fp16 CUDA iobinding"
ROW_TORCH_CUDA16 = "torch eager fp16 CUDA"
ROW_CUDA_FP16_DEV = "ORT fp16 CUDA, input on GPU"
ROW_CUDA_FP16_NCHW = "ORT fp16 CUDA NCHW, input on GPU"
ROW_E2E = "end-to-end files->embedding ({})"
#: Row names, in table order (the end-to-end rows are formatted with their model row).
ROWS = (
    ROW_TORCH,
    ROW_FP32,
    ROW_OPT,
    ROW_INT8,
    ROW_DYN,
    ROW_FP32_NOSPIN,
    ROW_INT8_NOSPIN,
    ROW_TORCH_CUDA,
    ROW_TORCH_CUDA16,
    ROW_CUDA_FP32,
    ROW_CUDA_FP16,
    ROW_CUDA_FP16_DEV,
    ROW_CUDA_FP16_NCHW,
    ROW_E2E,
)
_CPU_ROWS = {"fp32": ROW_FP32, "opt": ROW_OPT, "int8": ROW_INT8, "int8-dynamic": ROW_DYN}
_NOSPIN_ROWS = {"fp32": ROW_FP32_NOSPIN, "int8": ROW_INT8_NOSPIN}
BATCHES = (1, 32)
E2E_BATCH = 32
GOAL_SPEEDUP = 1.5
GOAL_RECALL = 0.99
GOAL_GPU_FP16 = 10_000  # images/s, EfficientNet-Lite0 fp16 on an H100-class GPU


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the table. ``infer`` maps a preprocessed batch to raw (n, dim) embeddings;
    end-to-end rows have ``files`` instead (paths -> L2-normalised embeddings)."""

    name: str
    variant: str
    device: str
    infer: Callable[[np.ndarray], np.ndarray] | None = None
    files: Callable[[Sequence[Path]], np.ndarray] | None = None
    model_id: str = "-"
    load_s: float | None = None
    batches: tuple[int, ...] = BATCHES
    seconds: dict[int, list[float]] = field(default_factory=dict)
    images: dict[int, int] = field(default_factory=dict)
    recall: float | None = None
    same_model_as: str | None = None  # a row computing the same function: recall copied
    prime: bool = False  # run once over all images before timing (uploads the inputs to the GPU)
    release: Callable[[], None] | None = None  # frees what priming kept, after timing

    def rate(self, batch: int) -> float | None:
        if not self.seconds.get(batch):
            return None
        return self.images[batch] / sum(self.seconds[batch])

    def round_rates(self, batch: int, per_round: list[int]) -> list[float]:
        return [n / s for n, s in zip(per_round, self.seconds.get(batch, []))]


def _model_id(path: Path) -> str:
    return f"{MODEL_NAME}-{sha256_file(path)[:12]}"


def _ort_cpu_row(name: str, variant: str, path: Path, threads: int, spin: bool = True) -> Row:
    """CPU provider session at ORT_ENABLE_ALL. ``spin=False`` turns off the intra-op pool's
    spin-waiting (``session.intra_op.allow_spinning=0``): idle pool threads sleep instead of
    busy-polling, which matters when the cores are shared with other work."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    start = time.perf_counter()
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - start

    def infer(x: np.ndarray) -> np.ndarray:
        return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    return Row(name, variant, "cpu", infer=infer, model_id=_model_id(path), load_s=load_s)


def _ort_cuda_row(
    name: str,
    variant: str,
    path: Path,
    threads: int,
    batches: tuple[int, ...],
    *,
    device_input: bool = False,
    provider_options: dict[str, str] | None = None,
) -> Row:
    """CUDA session fed through IO binding, output bound on the GPU.

    Host input (default): the batch is copied to the GPU per call and the output copied back,
    so transfers are timed. ``device_input``: every batch is uploaded once (the excluded
    priming pass) and bound as a CUDA OrtValue, and the output stays on the GPU: the model
    alone. ``run_with_iobinding`` returns when the GPU is done."""
    import onnxruntime as ort

    from encoders.image import try_cuda_session

    def session() -> Any:
        options = (CUDA_OPTIONS, {}) if provider_options is None else (provider_options,)
        sess = try_cuda_session(path.read_bytes(), threads, options)
        if sess is None:
            raise RuntimeError(f"CUDA provider does not load for {path.name} with {options}")
        return sess

    # One session per batch size, each only ever sees its own input shape (smaller batches are
    # zero-padded): onnxruntime's CUDA convolutions re-plan on every change of input shape, which
    # on an H200 cost 1-3 s a time, so sessions shared between batch sizes timed the re-planning.
    start = time.perf_counter()
    sizes = sorted(batches)
    sessions = {b: session() for b in sizes}
    load_s = (time.perf_counter() - start) / len(sessions)
    # Uploaded batches, keyed by the host array's address and shape. The entry keeps the host
    # view alive, so no other array can take that address while it is cached.
    on_gpu: dict[tuple[int, tuple[int, ...]], tuple[np.ndarray, Any]] = {}

    def infer(x: np.ndarray) -> np.ndarray:
        n = len(x)
        size = next((b for b in sizes if b >= n), None)
        if size is None:
            raise ValueError(f"batch of {n} is larger than every session's ({batches})")
        key = (x.__array_interface__["data"][0], x.shape)  # before padding: stable per view
        x = pad_rows(x, size)
        sess = sessions[size]
        binding = sess.io_binding()
        if device_input:
            if key not in on_gpu:
                value = ort.OrtValue.ortvalue_from_numpy(
                    np.ascontiguousarray(x, dtype=np.float32), "cuda", 0
                )
                on_gpu[key] = (x, value)
            binding.bind_ortvalue_input(INPUT_NAME, on_gpu[key][1])
        else:
            binding.bind_cpu_input(INPUT_NAME, np.ascontiguousarray(x, dtype=np.float32))
        binding.bind_output(OUTPUT_NAME, "cuda")
        sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0][:n]  # (n, 1280) fp32: 5 KB an image

    return Row(
        name,
        variant,
        "cuda",
        infer=infer,
        model_id=_model_id(path),
        load_s=load_s,
        batches=batches,
        prime=device_input,
        release=on_gpu.clear,
    )


def _torch_row(
    threads: int, device: str, half: bool = False, batches: tuple[int, ...] = BATCHES
) -> Row:
    import torch

    from encoders.training.export import build_torch_model

    start = time.perf_counter()
    model = build_torch_model()
    dtype = torch.float16 if half else torch.float32
    if device == "cuda":
        model = model.to("cuda", dtype)
    load_s = time.perf_counter() - start

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(x)).to(device, dtype))
            return out.float().cpu().numpy()  # .cpu() synchronises with the GPU

    name = ROW_TORCH if device != "cuda" else ROW_TORCH_CUDA16 if half else ROW_TORCH_CUDA
    return Row(name, "torch", device, infer=infer, load_s=load_s, batches=batches)


def _e2e_row(model_row: Row, path: Path, threads: int, pool: ThreadPoolExecutor) -> Row:
    from encoders.image import ImageEncoder

    enc = ImageEncoder(path, device=model_row.device, threads=threads)

    def files(paths: Sequence[Path]) -> np.ndarray:
        return enc.embed_images(list(pool.map(load_image, paths)))

    return Row(
        ROW_E2E.format(model_row.name),
        model_row.variant,
        model_row.device,
        files=files,
        model_id=enc.model_id,
        batches=(E2E_BATCH,),
    )


# ---------------------------------------------------------------- measuring


def _preprocess_files(paths: Sequence[Path], pool: ThreadPoolExecutor) -> np.ndarray:
    return np.concatenate(
        list(pool.map(lambda p: preprocess([load_image(p)]), paths)) or [np.empty((0, 3, 224, 224))]
    ).astype(np.float32, copy=False)


def _pass(row: Row, x: np.ndarray, paths: Sequence[Path], lo: int, hi: int, batch: int) -> None:
    for i in range(lo, hi, batch):
        j = min(i + batch, hi)
        if row.files is not None:
            row.files(paths[i:j])
        else:
            assert row.infer is not None
            row.infer(x[i:j])


def _time_rows(
    rows: list[Row], x: np.ndarray, paths: Sequence[Path], rounds: int, log: Callable
) -> list[int]:
    """Time every (row, batch) over all of ``x`` / ``paths``, split into ``rounds`` interleaved
    rounds; returns the images per round."""
    n = len(paths)
    rounds = max(1, min(rounds, n))
    bounds = [round(n * r / rounds) for r in range(rounds + 1)]
    per_round = [bounds[r + 1] - bounds[r] for r in range(rounds)]
    for row in rows:  # warm-up, excluded: first call per row and batch size
        for b in row.batches:
            _pass(row, x, paths, 0, min(b, n), b)
            if row.prime:  # every batch the timed passes will make, so each is cached
                for r in range(rounds):
                    _pass(row, x, paths, bounds[r], bounds[r + 1], b)
            row.seconds[b], row.images[b] = [], 0
    for r in range(rounds):
        for row in rows:
            for b in row.batches:
                start = time.perf_counter()
                _pass(row, x, paths, bounds[r], bounds[r + 1], b)
                row.seconds[b].append(time.perf_counter() - start)
                row.images[b] += per_round[r]
        log(f"  timing round {r + 1}/{rounds} done")
    for row in rows:
        if row.release is not None:
            row.release()
    return per_round


def _catalogue_embeddings(
    rows: list[Row], paths: Sequence[Path], pool: ThreadPoolExecutor, chunk: int = 64
) -> dict[str, np.ndarray]:
    """Each model row's raw embeddings of ``paths`` (decoded once, chunk by chunk)."""
    out: dict[str, list[np.ndarray]] = {r.name: [] for r in rows}
    for i in range(0, len(paths), chunk):
        x = _preprocess_files(paths[i : i + chunk], pool)
        for row in rows:
            assert row.infer is not None
            out[row.name].extend(row.infer(x[j : j + 32]) for j in range(0, len(x), 32))
    return {k: np.concatenate(v) for k, v in out.items()}


# ---------------------------------------------------------------- report


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[Row], base: Row) -> str:
    """One line a row: images/s at batch 1 and 32 with the ratio to ``base`` (ORT fp32, CPU),
    plus a column for any larger batch that the GPU rows also ran."""
    big = sorted({b for r in rows for b in r.batches if b not in BATCHES})
    head = (
        f"{'row':<52} {'b1 img/s':>9} {'x fp32':>7} {'b32 img/s':>10} {'x fp32':>7} "
        + "".join(f"{f'b{b} img/s':>11} " for b in big)
        + f"{'recall@10':>9} {'load s':>7}  model_id"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = [f"{row.name:<52}"]
        for b, width in ((1, 9), (32, 10)):
            rate, ref = row.rate(b), base.rate(b)
            ratio = rate / ref if rate is not None and ref else None
            cells.append(f"{_fmt(rate, '.1f'):>{width}}")
            cells.append(f"{_fmt(ratio, '.2f') + ('x' if ratio is not None else ''):>7}")
        cells += [f"{_fmt(row.rate(b), '.1f'):>11}" for b in big]
        cells.append(f"{_fmt(row.recall, '.4f'):>9}")
        cells.append(f"{_fmt(row.load_s, '.2f'):>7}")
        cells.append(f" {row.model_id}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _gpu_goal_line(rows: list[Row]) -> str | None:
    """The fastest fp16 CUDA (row, batch) against GOAL_GPU_FP16 images/s."""
    best = max(
        (
            (rate, row.name, b)
            for row in rows
            if row.device == "cuda" and row.variant == "fp16" and row.files is None
            for b in row.batches
            if (rate := row.rate(b)) is not None
        ),
        default=None,
    )
    if best is None:
        return None
    rate, name, b = best
    verdict = "MET" if rate >= GOAL_GPU_FP16 else "NOT met"
    return (
        f"GPU goal (>= {GOAL_GPU_FP16:,} img/s EfficientNet-Lite0 fp16): {verdict}, "
        f"best {rate:,.0f} img/s by {name} at batch {b}"
    )


def _goal_line(rows: list[Row], base: Row) -> str:
    """Whether some CPU variant reaches GOAL_SPEEDUP x ORT fp32 (batch 1 and 32) at recall."""
    verdicts = []
    for row in rows:
        if row.device != "cpu" or row is base or row.files is not None or row.variant == "torch":
            continue
        ratios = [row.rate(b) / base.rate(b) for b in BATCHES if row.rate(b) and base.rate(b)]
        if not ratios:
            continue
        speed_ok = min(ratios) >= GOAL_SPEEDUP
        recall_ok = row.recall is not None and row.recall >= GOAL_RECALL
        verdicts.append((speed_ok and recall_ok, row, min(ratios), max(ratios)))
    met = [v for v in verdicts if v[0]]
    goal = f"CPU goal (>= {GOAL_SPEEDUP}x ORT fp32 at batch 1 and 32, recall@10 >= {GOAL_RECALL})"
    if met:
        return f"{goal}: MET by " + ", ".join(v[1].name for v in met)
    detail = "; ".join(
        f"{r.name}: {lo:.2f}-{hi:.2f}x at recall {_fmt(r.recall, '.4f')}"
        for _, r, lo, hi in verdicts
    )
    return f"{goal}: NOT met ({detail})"


# ---------------------------------------------------------------- main


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "CUDA device"


def _cuda_rows_wanted(device: str, probe: Path, log: Callable) -> bool:
    """True if CUDA rows should run; for ``--device cuda`` raises if CUDA does not load."""
    import onnxruntime as ort

    from encoders.image import try_cuda_session

    if device == "cpu":
        log("CUDA rows skipped: --device cpu")
        return False
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        msg = f"CUDA rows skipped: onnxruntime has no CUDAExecutionProvider ({providers})"
    else:
        if try_cuda_session(probe.read_bytes(), 1) is not None:
            return True
        msg = "CUDA rows skipped: CUDAExecutionProvider is listed but does not load here"
    if device == "cuda":
        raise RuntimeError(msg.replace("CUDA rows skipped: ", "--device cuda: "))
    log(msg)
    return False


def _cuda_rows(
    args: argparse.Namespace, files: dict[str, Path], threads: int, log: Callable[[str], None]
) -> list[Row]:
    """The GPU rows: torch eager fp32/fp16, ORT fp32/fp16 with host input, ORT fp16 with the
    input already on the GPU (the encoder's options, and without ``prefer_nhwc``); batches 1,
    32 and ``--gpu-batch``."""
    batches = tuple(sorted({*BATCHES, args.gpu_batch}))
    rows: list[Row] = []
    if not args.no_torch:
        try:
            import torch

            if torch.cuda.is_available():
                rows.append(_torch_row(threads, "cuda", batches=batches))
                rows.append(_torch_row(threads, "cuda", half=True, batches=batches))
        except ImportError:
            log("torch CUDA rows skipped: torch is not installed")
    rows.append(_ort_cuda_row(ROW_CUDA_FP32, "fp32", files["fp32"], threads, batches))
    rows.append(_ort_cuda_row(ROW_CUDA_FP16, "fp16", files["fp16"], threads, batches))
    rows.append(
        _ort_cuda_row(ROW_CUDA_FP16_DEV, "fp16", files["fp16"], threads, batches, device_input=True)
    )
    rows[-1].same_model_as = ROW_CUDA_FP16
    try:
        rows.append(
            _ort_cuda_row(
                ROW_CUDA_FP16_NCHW,
                "fp16",
                files["fp16"],
                threads,
                batches,
                device_input=True,
                provider_options={k: v for k, v in CUDA_OPTIONS.items() if k != "prefer_nhwc"},
            )
        )
    except Exception as exc:
        log(f"{ROW_CUDA_FP16_NCHW} skipped: {exc}")
    return rows


def run_bench(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; returns the JSON-able result."""
    threads = args.threads or len(os.sched_getaffinity(0))
    wanted = [v for v in args.variants.split(",") if v]
    unknown = [v for v in wanted if v not in _CPU_ROWS]
    if unknown:
        raise ValueError(f"unknown --variants {unknown}; choose from {', '.join(_CPU_ROWS)}")
    if "fp32" not in wanted:
        wanted.insert(0, "fp32")
    load_before = os.getloadavg()
    paths = V.list_images(items_csv=args.items, images=args.images)
    if len(paths) < 12:
        raise ValueError(f"need at least 12 images, found {len(paths)}")
    model_dir = Path(args.model_dir)
    fp32 = V.ensure_variant(model_dir, "fp32")
    use_cuda = _cuda_rows_wanted(args.device, fp32, log)

    files: dict[str, Path] = {"fp32": fp32}
    calib_names: set[str] = set()
    for name in [*[v for v in wanted if v != "fp32"], *(["fp16"] if use_cuda else [])]:
        start = time.perf_counter()
        calib = None
        if name == "int8" and not V.variant_path(model_dir, name).is_file():
            calib, _ = V.calibration_batch(paths)
        files[name] = V.ensure_variant(model_dir, name, calibration=calib)
        log(f"variant {name}: {files[name]} ({time.perf_counter() - start:.1f} s)")
        meta_path = files[name].with_suffix(".json")
        if meta_path.is_file():
            calib_names |= set(json.loads(meta_path.read_text()).get("calibration_images", []))
    if not use_cuda:
        log("fp16 variant skipped: it is meant for the CUDA provider (see --device)")

    pool_paths = [p for p in paths if p.name not in calib_names]
    if len(pool_paths) < 12:  # tiny image sets: fall back to all images rather than fail
        pool_paths = paths
    picked = random.Random(args.seed).sample(
        pool_paths, min(len(pool_paths), max(args.n, args.catalogue))
    )
    bench_paths, cat_paths = picked[: args.n], picked[: args.catalogue]

    rows: list[Row] = []
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(threads)
            rows.append(_torch_row(threads, "cpu"))
        except ImportError:
            log("torch eager row skipped: torch is not installed")
    for v in wanted:
        rows.append(_ort_cpu_row(_CPU_ROWS[v], v, files[v], threads))
    if not args.no_spin_rows:
        for v in (v for v in wanted if v in _NOSPIN_ROWS):
            row = _ort_cpu_row(_NOSPIN_ROWS[v], v, files[v], threads, spin=False)
            row.same_model_as = _CPU_ROWS[v]
            rows.append(row)
    base = next(r for r in rows if r.name == ROW_FP32)
    if use_cuda:
        rows += _cuda_rows(args, files, threads, log)
    model_rows = list(rows)

    with ThreadPoolExecutor(threads, thread_name_prefix="bench-decode") as pool:
        e2e_models = [base] + [r for r in rows if r.name in (ROW_INT8, ROW_CUDA_FP16)]
        rows += [_e2e_row(r, files[r.variant], threads, pool) for r in e2e_models]

        start = time.perf_counter()
        x = _preprocess_files(bench_paths, pool)
        log(f"preprocessed {len(x)} benchmark images in {time.perf_counter() - start:.1f} s")
        per_round = _time_rows(rows, x, bench_paths, args.rounds, log)
        del x

        start = time.perf_counter()
        recall_rows = [r for r in model_rows if r.same_model_as is None]
        embs = _catalogue_embeddings(recall_rows, cat_paths, pool)
        log(
            f"catalogue: {len(cat_paths)} images embedded by {len(recall_rows)} rows in "
            f"{time.perf_counter() - start:.1f} s"
        )
    ref = embs[ROW_FP32]
    k = min(10, len(cat_paths) - 1)
    for row in recall_rows:
        row.recall = V.neighbour_agreement(ref, embs[row.name], k=k)
    for row in model_rows:
        if row.same_model_as is not None:
            row.recall = next(r.recall for r in recall_rows if r.name == row.same_model_as)

    load_after = os.getloadavg()
    import onnxruntime as ort

    result: dict[str, Any] = {
        "n": len(bench_paths),
        "catalogue": len(cat_paths),
        "recall_k": k,
        "threads": threads,
        "device": "cuda" if use_cuda else "cpu",
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in load_after],
        "onnxruntime": ort.__version__,
        "rounds": len(per_round),
        "rows": [
            {
                "name": r.name,
                "variant": r.variant,
                "device": r.device,
                "model_id": r.model_id,
                "load_s": r.load_s,
                "recall_at_k": r.recall,
                **{
                    f"b{b}": {
                        "images_per_s": r.rate(b),
                        "vs_ort_fp32": (r.rate(b) or 0) / base.rate(b) if base.rate(b) else None,
                        "round_images_per_s": r.round_rates(b, per_round),
                    }
                    for b in r.batches
                },
            }
            for r in rows
        ],
    }
    result["table"] = format_table(rows, base)
    result["goal"] = _goal_line(rows, base)
    if use_cuda:
        c32 = next(r for r in rows if r.name == ROW_CUDA_FP32)
        c16 = next(r for r in rows if r.name == ROW_CUDA_FP16)
        result["cuda_fp16_vs_fp32"] = {
            f"b{b}": (c16.rate(b) or 0) / c32.rate(b) for b in c32.batches if c32.rate(b)
        }
        result["gpu_goal"] = _gpu_goal_line(rows)
        result["gpu"] = _gpu_name()
    return result


DESCRIPTION = "Encoder variants side by side: images/s at batch 1 and 32, recall@10 vs fp32."


def add_args(ap: argparse.ArgumentParser) -> None:
    """``vrec bench encoder``'s arguments."""
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--items", type=Path, help="items CSV with an image_path column")
    src.add_argument("--images", type=Path, help="directory of images (searched recursively)")
    ap.add_argument("--n", type=int, default=256, help="images timed per row (default 256)")
    ap.add_argument(
        "--catalogue", type=int, default=2000, help="images for recall@10 (default 2000)"
    )
    ap.add_argument("--threads", type=int, default=0, help="ORT/torch threads (default: all)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    ap.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get("VREC_MODEL_DIR", ".cache/models")),
        help="where efficientnet_lite0*.onnx are cached (default $VREC_MODEL_DIR or .cache/models)",
    )
    ap.add_argument(
        "--variants",
        default="fp32,opt,int8,int8-dynamic",
        help="CPU variants to run (default fp32,opt,int8,int8-dynamic; fp32 always runs)",
    )
    ap.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds (default 8)")
    ap.add_argument(
        "--gpu-batch",
        type=int,
        default=256,
        help="a third batch size for the CUDA rows (default 256)",
    )
    ap.add_argument("--seed", type=int, default=0, help="image sampling seed")
    ap.add_argument("--no-torch", action="store_true", help="leave out the torch eager rows")
    ap.add_argument(
        "--no-spin-rows", action="store_true", help="leave out the 'no spin-wait' ORT rows"
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the table")


def main(argv: list[str] | None = None) -> int:
    """``vrec bench encoder`` from ``argv`` (tests call this): :func:`add_args`, :func:`run`."""
    ap = argparse.ArgumentParser(prog="vrec bench encoder", description=DESCRIPTION)
    add_args(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """``vrec bench encoder``: time the variants, print the table (2: bad arguments)."""
    if args.n < 1 or args.catalogue < 12:
        print("--n must be >= 1 and --catalogue >= 12", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        result = run_bench(args, log)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"vrec bench encoder: {exc}", file=sys.stderr)
        return 2
    print(
        f"vrec bench encoder: {result['n']} images timed per row, recall@{result['recall_k']} "
        f"over {result['catalogue']} catalogue images; {result['threads']} threads; "
        f"device {result['device']}"
    )
    print(
        f"{result['cpu']} ({result['cpu_count']} CPUs), onnxruntime {result['onnxruntime']}; "
        f"load average {' '.join(map(str, result['load_before']))} before, "
        f"{' '.join(map(str, result['load_after']))} after"
    )
    print(result["table"])
    if "cuda_fp16_vs_fp32" in result:
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in result["cuda_fp16_vs_fp32"].items())
        print(f"CUDA fp16 vs CUDA fp32: {ratios} ({result['gpu']})")
        print(result["gpu_goal"])
    print("x fp32: images/s relative to the ORT fp32 row (CPU provider) in this same run")
    print(result["goal"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
