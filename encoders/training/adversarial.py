"""Adversarial + perturbation fine-tuning of the EfficientNet-Lite0 embedding model.

The torch model of :func:`encoders.training.export.build_torch_model` is fine-tuned so that an
image's embedding stays put when the image is perturbed, without moving clean embeddings:

* adversarial examples: FGSM with a random start (training) and PGD (evaluation) maximise the
  embedding drift ``1 - cos(f(x + d), f(x))`` within an L-inf ball of ``eps`` pixel levels
  (``--eps 4``: 4/255 of the pixel range, 8/255 in the model's [-1, 1] input units);
* realistic perturbations of the decoded photo (:data:`PERTURBATIONS`): JPEG recompression,
  resize down and up, colour jitter, a small crop.

Loss per batch, with ``r`` the frozen original model's clean embedding (the teacher ONNX
embeddings from :mod:`encoders.cache`; same maths as the torch model within 1e-5):
``w_clean * (1 - cos(f(x), r)) + w_real * (1 - cos(f(T(x)), r)) + w_adv * (1 - cos(f(x+d), r))``.
Only the last ``--train-blocks`` MBConv blocks, the head conv and its BatchNorm affine are
trained; the model stays in eval mode (frozen BatchNorm statistics, no drop-connect).

Evaluation (held-out product codes, before = original model, after = fine-tuned): for each
perturbation the recall@10 of an image's clean top-10 neighbours when the query is its
perturbed version (gallery: the clean embeddings of the same model, self excluded) and the
mean cosine clean vs perturbed; clean retrieval as recall@10 of the original model's
neighbours and the nearest-neighbour same ``product_type_name`` rate.

Artefacts: ``<out>/adversarial-efficientnet_lite0/<sha12>.onnx`` (``pixels`` -> ``embedding``,
224 px, ONNX metadata ``model_name``, so ImageEncoder's model id is
``adversarial-efficientnet_lite0-<sha12>``), ``<sha12>.metrics.json``, ``current.json``.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from encoders.image import INPUT_SIZE
from encoders.preprocess import load_image, preprocess
from encoders.training.cli_common import config_from_args, print_result, run_options
from encoders.training.distill import (
    add_common_args,
    batch_slices,
    export_embedding_model,
    holdout_split,
    metrics_path,
    nn_same_label_rate,
    prepare_run,
    tqdm_bar,
    unit_rows,
    write_json,
)

__all__ = [
    "ADV_NAME",
    "PERTURBATIONS",
    "AdvConfig",
    "attack",
    "evaluate",
    "finetune",
    "perturb",
    "run_adversarial",
]

ADV_NAME = "adversarial-efficientnet_lite0"
#: Realistic perturbations of a decoded product photo.
PERTURBATIONS = ("jpeg", "resize", "colour", "crop")


# ------------------------------------------------------------------ perturbations


def perturb(img: Image.Image, kind: str, rng: np.random.Generator, strength: float = 1.0):
    """A perturbed copy of an RGB image. ``strength`` 1.0 is the evaluation setting; training
    draws a random strength in (0.5, 1.0] per image.

    jpeg: recompress at quality ``95 - 65 * strength`` (30 at 1.0); resize: down to
    ``1 - 0.5 * strength`` of each side and back (bilinear); colour: brightness, contrast and
    saturation each times ``1 +- 0.25 * strength`` (random signs); crop: keep a
    ``1 - 0.12 * strength`` share of each side at a random offset.
    """
    w, h = img.size
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(round(95 - 65 * strength)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "resize":
        f = 1.0 - 0.5 * strength
        small = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)
        return small.resize((w, h), Image.Resampling.BILINEAR)
    if kind == "colour":
        out = img
        for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            out = enh(out).enhance(1.0 + 0.25 * strength * rng.choice((-1.0, 1.0)))
        return out
    if kind == "crop":
        f = 1.0 - 0.12 * strength
        cw, ch = max(1, round(w * f)), max(1, round(h * f))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x0, y0, x0 + cw, y0 + ch))
    raise ValueError(f"unknown perturbation {kind!r}; choose from {PERTURBATIONS}")


def _eps_units(eps_levels: float) -> float:
    """Pixel levels (of 255) -> the model's [-1, 1] input units."""
    return 2.0 * eps_levels / 255.0


def attack(
    model: Any, x: Any, eps: float, steps: int = 1, step: float | None = None, seed: int = 0
) -> Any:
    """L-inf attack maximising ``1 - cos(f(x + d), f(x))``: FGSM with a random start for
    ``steps == 1``, else PGD (random start, ``steps`` signed-gradient steps of ``step``).
    ``eps`` and ``step`` are in input units; the result is clipped to [-1, 1]."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ref = F.normalize(model(x), dim=1)
    step = step if step is not None else (1.25 * eps if steps == 1 else 2.5 * eps / steps)
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        out = F.normalize(model((x + delta).clamp(-1, 1)), dim=1)
        drift = (1.0 - (out * ref).sum(dim=1)).sum()
        (grad,) = torch.autograd.grad(drift, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(-1, 1).detach()


# ------------------------------------------------------------------ model


def trainable_tail(model: Any, n_blocks: int) -> list[Any]:
    """Freeze everything but the last ``n_blocks`` MBConv blocks and the head conv + BN;
    returns the trainable parameters."""
    bb = model.backbone
    for p in model.parameters():
        p.requires_grad_(False)
    modules = [*list(bb._blocks)[len(bb._blocks) - n_blocks :], bb._conv_head, bb._bn1]
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def _embed(model: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for s in batch_slices(len(x), batch):
            out.append(model(torch.from_numpy(np.asarray(x[s], dtype=np.float32))).numpy())
    return unit_rows(np.concatenate(out))


def _embed_attacked(model: Any, x: np.ndarray, eps: float, steps: int, seed: int, batch=16):
    import torch

    out = []
    for i, s in enumerate(batch_slices(len(x), batch)):
        xa = attack(model, torch.from_numpy(x[s].astype(np.float32)), eps, steps, seed=seed + i)
        with torch.no_grad():
            out.append(model(xa).numpy())
    return unit_rows(np.concatenate(out))


# ------------------------------------------------------------------ evaluation


def _neighbours(q: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    """Top-k gallery rows for each query row i (gallery row i, the item itself, excluded)."""
    sims = q @ g.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k, axis=1)[:, :k]


def query_recall(clean: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Mean recall@k of each item's clean top-k neighbours when querying with ``queries[i]``
    against the clean gallery (the item itself excluded)."""
    a, b = _neighbours(clean, clean, k), _neighbours(queries, clean, k)
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)]))


def evaluate(
    model: Any,
    images: Sequence[Image.Image],
    pixels: np.ndarray,
    labels: np.ndarray,
    cfg: AdvConfig,
    reference: np.ndarray | None = None,
    attack_n: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """Stability and clean-retrieval metrics of ``model`` on ``images`` (see module doc).

    ``reference``: the original model's clean embeddings (default: this model's)."""
    k = min(10, len(images) - 2)
    clean = _embed(model, pixels)
    ref = clean if reference is None else reference
    res: dict[str, Any] = {
        "n": len(images),
        "k": k,
        "clean_recall_vs_original": query_recall(ref, clean, k) if reference is not None else 1.0,
        "clean_nn_same_type": nn_same_label_rate(clean, labels),
    }
    bar = tqdm_bar(progress, len(PERTURBATIONS) + 2, "evaluate")
    for j, kind in enumerate(PERTURBATIONS):
        rng = np.random.default_rng(cfg.seed + 1000 + j)
        x = preprocess([perturb(im, kind, rng) for im in images], INPUT_SIZE)
        q = _embed(model, x)
        res[kind] = _stability(clean, q, k)
        bar.update(1)
    n_att = min(attack_n, len(images))
    eps = _eps_units(cfg.eps)
    for name, steps in (("fgsm", 1), (f"pgd{cfg.pgd_steps}", cfg.pgd_steps)):
        q = _embed_attacked(model, pixels[:n_att], eps, steps, cfg.seed + 7)
        qs = clean.copy()
        qs[:n_att] = q  # only the attacked rows are queried; the gallery stays clean
        res[name] = _stability(clean, qs, k, rows=n_att)
        bar.update(1)
    bar.close()
    return res


def _stability(clean: np.ndarray, q: np.ndarray, k: int, rows: int | None = None) -> dict:
    """recall@k of clean neighbours for perturbed queries, and mean cos(clean, perturbed)."""
    n = len(clean) if rows is None else rows
    a, b = _neighbours(clean, clean, k)[:n], _neighbours(q[:n], clean, k)
    recall = float(np.mean([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)]))
    return {"recall": recall, "cos": float(np.mean(np.sum(clean[:n] * q[:n], axis=1))), "n": n}


# ------------------------------------------------------------------ training


@dataclass(frozen=True)
class AdvConfig:
    epochs: int = 1
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.0
    train_blocks: int = 2  # last MBConv blocks trained (plus head conv + BN)
    eps: float = 4.0  # L-inf radius, pixel levels of 255
    pgd_steps: int = 3  # evaluation attack
    # 4: clean same-type retrieval within 1% of the original on H&M (1 lost 1.1 points)
    w_clean: float = 4.0
    w_real: float = 1.0
    w_adv: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def finetune(
    model: Any,
    images: Sequence[Image.Image],
    pixels: np.ndarray,
    reference: np.ndarray,
    cfg: AdvConfig,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Fine-tune ``model``'s tail in place on clean / realistic / FGSM views; per-epoch history."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    params = trainable_tail(model, cfg.train_blocks)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ref = torch.from_numpy(unit_rows(reference))
    eps = _eps_units(cfg.eps)
    model.eval()
    n = len(images)
    bar = tqdm_bar(progress, cfg.epochs * len(batch_slices(n, cfg.batch_size)), "adversarial")
    history = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        perm = rng.permutation(n)
        sums = np.zeros(4)
        for s in batch_slices(n, cfg.batch_size):
            idx = np.sort(perm[s])
            x = torch.from_numpy(pixels[idx].astype(np.float32))
            kinds = rng.choice(PERTURBATIONS, size=len(idx))
            real = [
                perturb(images[i], str(kd), rng, float(rng.uniform(0.5, 1.0)))
                for i, kd in zip(idx.tolist(), kinds)
            ]
            xr = torch.from_numpy(preprocess(real, INPUT_SIZE))
            xa = attack(model, x, eps, 1, seed=cfg.seed + step)
            out = F.normalize(model(torch.cat([x, xr, xa])), dim=1)
            r = ref[idx]
            drift = [(1.0 - (o * r).sum(dim=1)).mean() for o in out.split(len(idx))]
            loss = cfg.w_clean * drift[0] + cfg.w_real * drift[1] + cfg.w_adv * drift[2]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sums += np.array([loss.item(), *(d.item() for d in drift)]) * len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", adv=f"{drift[2].item():.4f}")
        sums /= n
        history.append(
            {"epoch": epoch, "loss": sums[0], "clean": sums[1], "real": sums[2], "adv": sums[3]}
        )
    bar.close()
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return history


def run_adversarial(
    paths: Sequence[Path],
    codes: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    cfg: AdvConfig,
    out_dir: Path | None,
    holdout: float = 0.15,
    eval_n: int = 300,
    attack_n: int = 100,
    eval_train: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Split by product code, evaluate the original model, fine-tune, evaluate again, export."""
    import torch

    from encoders.image import ImageEncoder
    from encoders.training.export import build_torch_model

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    valid = np.abs(reference).sum(axis=1) > 0
    keep = np.flatnonzero(valid)
    paths = [paths[i] for i in keep.tolist()]
    codes, labels, reference = codes[keep], np.asarray(labels)[keep], reference[keep]
    tr, te = holdout_split(codes, holdout, cfg.seed)
    te = te[:eval_n] if eval_n else te
    ev_tr = tr[:eval_train]
    log(f"{len(tr)} train / {len(te)} held-out eval images")
    images = [load_image(p) for p in paths]
    bar = tqdm_bar(progress, len(images), "preprocess")
    pixels = np.empty((len(images), 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float16)
    for i, im in enumerate(images):
        pixels[i] = preprocess([im], INPUT_SIZE)[0]
        bar.update(1)
    bar.close()

    def sets(rows: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
        return [images[i] for i in rows.tolist()], pixels[rows], labels[rows]

    model = build_torch_model()
    before = evaluate(model, *sets(te), cfg, attack_n=attack_n, progress=progress)
    before_tr = evaluate(model, *sets(ev_tr), cfg, attack_n=attack_n) if len(ev_tr) > 12 else None
    orig_te = _embed(model, pixels[te])
    orig_tr = _embed(model, pixels[ev_tr]) if before_tr is not None else None
    t_train = time.perf_counter()
    history = finetune(
        model, [images[i] for i in tr.tolist()], pixels[tr], reference[tr], cfg, progress
    )
    train_s = time.perf_counter() - t_train
    after = evaluate(model, *sets(te), cfg, orig_te, attack_n=attack_n, progress=progress)
    before["clean_recall_vs_original"] = 1.0
    metrics: dict[str, Any] = {
        "base": "efficientnet_lite0 (encoders.training.export.build_torch_model)",
        "n_images": len(paths),
        "n_train": int(len(tr)),
        "n_heldout_eval": int(len(te)),
        "attack_n": min(attack_n, len(te)),
        "split": f"by product_code, held-out fraction {holdout}",
        "perturbations": list(PERTURBATIONS),
        "attacks": ["fgsm", f"pgd{cfg.pgd_steps}"],
        "eps_pixel_levels": cfg.eps,
        "heldout_before": before,
        "heldout_after": after,
        "history": history,
        "train_seconds": round(train_s, 1),
        "config": cfg.as_dict(),
    }
    nn_b, nn_a = before["clean_nn_same_type"], after["clean_nn_same_type"]
    metrics["clean_nn_same_type_change"] = nn_a - nn_b
    metrics["clean_within_1pct"] = bool(nn_a >= nn_b - 0.01)
    if before_tr is not None:
        metrics["train_subset_before"] = before_tr
        metrics["train_subset_after"] = evaluate(model, *sets(ev_tr), cfg, orig_tr, attack_n)
    if out_dir is not None:
        model_id, onnx_path, diff = export_embedding_model(
            model, INPUT_SIZE, out_dir, ADV_NAME, {"base": "efficientnet_lite0"}
        )
        enc = ImageEncoder(onnx_path, device="cpu")
        assert enc.model_id == model_id, (enc.model_id, model_id)
        via_onnx = enc.embed(pixels[te].astype(np.float32))
        metrics.update(
            model_id=model_id,
            onnx=str(onnx_path),
            onnx_max_abs_diff=diff,
            heldout_onnx_vs_torch_max_abs_diff=float(
                np.abs(via_onnx - _embed(model, pixels[te])).max()
            ),
        )
        metrics["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(metrics_path(onnx_path), metrics)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    metrics["_model"] = model
    return metrics


def format_report(m: dict[str, Any]) -> str:
    """Before/after table of a :func:`run_adversarial` metrics dict."""
    b, a = m["heldout_before"], m["heldout_after"]
    k = b["k"]
    head = f"{'held-out (' + str(b['n']) + ')':<22} {'recall@' + str(k) + ' before':>16} "
    head += f"{'after':>7} {'cos before':>11} {'after':>7}"
    lines = [f"{m.get('model_id', '(not exported)')}: train {m['n_train']} images", head]
    for kind in [*PERTURBATIONS, *m["attacks"]]:
        lines.append(
            f"{kind:<22} {b[kind]['recall']:>16.3f} {a[kind]['recall']:>7.3f} "
            f"{b[kind]['cos']:>11.3f} {a[kind]['cos']:>7.3f}"
        )
    lines.append(f"{'clean recall vs orig':<22} {1.0:>16.3f} {a['clean_recall_vs_original']:>7.3f}")
    lines.append(
        f"{'clean NN same type':<22} {b['clean_nn_same_type']:>16.3f} "
        f"{a['clean_nn_same_type']:>7.3f}"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ CLI


def add_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p, epochs=1)
    d = AdvConfig()
    p.set_defaults(batch_size=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--eps", type=float, default=d.eps, help="L-inf radius in pixel levels")
    p.add_argument("--pgd-steps", type=int, default=d.pgd_steps)
    p.add_argument("--train-blocks", type=int, default=d.train_blocks)
    p.add_argument("--w-clean", type=float, default=d.w_clean, help="clean-drift loss weight")
    p.add_argument("--w-real", type=float, default=d.w_real, help="perturbation loss weight")
    p.add_argument("--w-adv", type=float, default=d.w_adv, help="FGSM loss weight")
    p.add_argument("--eval-n", type=int, default=300, help="held-out images evaluated")
    p.add_argument("--attack-n", type=int, default=100, help="of those, attacked")
    p.add_argument("--eval-train", type=int, default=0, help="also evaluate N train images")


def run_cli(args: argparse.Namespace) -> int:
    """``vrec train adversarial``."""
    run = prepare_run(args)
    cfg = config_from_args(AdvConfig, args)
    options = run_options(args, "eval_n", "attack_n", "eval_train")
    m = run_adversarial(run.paths, run.codes, run.labels, run.teacher, cfg, run.out_dir, **options)
    return print_result(m, f"from {run.teacher_id}", format_report)
