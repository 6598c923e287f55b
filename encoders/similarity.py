"""``vrec train similarity``: a colour-aware projection head on the frozen EfficientNet-Lite0.

ImageNet features put a black T-shirt next to a black top and a white T-shirt far away; a shop
that wants "more like this" usually means the same kind of product in the same colour. This
trains a small head ``h`` on the cached, L2-normalised 1280-d catalogue embeddings (no pixels
are decoded, so it takes seconds on a CPU) with a graded supervised-contrastive loss:

    loss_i = - sum_j w_ij log softmax_j(cos(h(x_i), h(x_j)) / T) / sum_j w_ij   (j != i, in-batch)

with ``w_ij = 1`` for the same label *and* colour (the positive class), ``w_ij = weak`` for the
same label only (a weaker positive) and 0 otherwise. Items are split by ``--group`` (e.g.
``product_code``): the head never sees the held-out products, on which the baseline (the raw
embeddings) and the head are compared (precision@10 of same label, and of same label + colour,
:mod:`streams.eval.catalogue`; neighbours of the same group left out).

Export: the graph ``pixels (N, 3, 224, 224) -> embedding (N, dim)`` is the base encoder
(:func:`encoders.export.build_torch_model`), an L2 normalisation (the space the head was trained
on) and the head, so it keeps the ``pixels -> embedding`` contract and :class:`ImageEncoder`
loads it (``VREC_ENCODER_MODEL=<models>/similarity-efficientnet_lite0``). Files, as
:mod:`encoders.distill`: ``<models>/similarity-efficientnet_lite0/<sha12>.onnx`` (metadata
``model_name``, so the model id is ``similarity-efficientnet_lite0-<sha12>``), ``current.json``,
``<sha12>.metrics.json`` and ``<sha12>.heldout.csv`` (the held-out catalogue rows, image paths
absolute, for ``vrec eval catalogue --items ... --model ...``). The ONNX output is checked
against torch (max abs diff <= 1e-4) on real catalogue images.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .export import EMBED_DIM, INPUT_NAME, INPUT_SIZE, OUTPUT_NAME

if TYPE_CHECKING:
    import torch

__all__ = [
    "NAME",
    "SimilarityConfig",
    "add_args",
    "build_encoder",
    "build_head",
    "export_similarity_model",
    "graded_supcon_loss",
    "head_embeddings",
    "image_parity",
    "run_cli",
    "train_head",
    "train_similarity",
]

NAME = "similarity-efficientnet_lite0"
PARITY_TOL = 1e-4


@dataclass(frozen=True)
class SimilarityConfig:
    dim: int = 256  # output embedding size
    hidden: int = 1024  # 0: a linear head
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    weak: float = 0.3  # weight of same-label (other colour) positives
    colour_weak: float = 0.0  # weight of same-colour (other label) positives
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_head(in_dim: int, cfg: SimilarityConfig) -> torch.nn.Module:
    """Linear, or Linear-ReLU-Linear, from ``in_dim`` to ``cfg.dim``."""
    from torch import nn

    if cfg.hidden > 0:
        return nn.Sequential(
            nn.Linear(in_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim)
        )
    return nn.Sequential(nn.Linear(in_dim, cfg.dim))


def graded_supcon_loss(
    z: torch.Tensor,
    label: torch.Tensor,
    joint: torch.Tensor,
    weak: float,
    temperature: float,
    colour: torch.Tensor | None = None,
    colour_weak: float = 0.0,
) -> torch.Tensor:
    """Supervised contrastive loss with graded positives (see the module docstring).

    ``z`` (B, d) raw head outputs; ``label`` / ``joint`` / ``colour`` (B,) int class ids of the
    label, of label + colour and of the colour (pairs of the same colour and another label
    weigh ``colour_weak``). Rows without any positive in the batch do not count.
    """
    import torch
    import torch.nn.functional as F

    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    same_label = label[:, None] == label[None, :]
    same_joint = joint[:, None] == joint[None, :]
    other = torch.zeros_like(logits)
    if colour is not None and colour_weak > 0:
        other = torch.where(colour[:, None] == colour[None, :], colour_weak, 0.0)
    w = torch.where(same_joint, 1.0, torch.where(same_label, weak, other)).masked_fill(eye, 0.0)
    total = w.sum(dim=1)
    rows = total > 0
    if not rows.any():
        return (z * 0).sum()
    per_row = -(w * log_prob.masked_fill(eye, 0.0)).sum(dim=1)[rows] / total[rows]
    return per_row.mean()


def train_head(
    x: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    colours: Sequence[str] | np.ndarray,
    cfg: SimilarityConfig = SimilarityConfig(),
    progress: bool = False,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train the head on unit rows ``x`` with :func:`graded_supcon_loss`; (head in eval mode,
    per-epoch mean loss)."""
    import torch

    from streams.eval.catalogue import joint_labels

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    lab = torch.as_tensor(np.unique(np.asarray(labels, dtype=str), return_inverse=True)[1])
    col = torch.as_tensor(np.unique(np.asarray(colours, dtype=str), return_inverse=True)[1])
    joint = joint_labels(np.asarray(labels, dtype=str), np.asarray(colours, dtype=str))
    jnt = torch.as_tensor(np.unique(joint, return_inverse=True)[1])
    head = build_head(xt.shape[1], cfg)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, -(-len(xt) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    history: list[dict[str, float]] = []
    head.train()
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(len(xt), generator=gen)
        total, batches = 0.0, 0
        for i in range(0, len(xt), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = graded_supcon_loss(
                head(xt[idx]), lab[idx], jnt[idx], cfg.weak, cfg.temperature,
                col[idx], cfg.colour_weak,
            )  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, batches = total + loss.item(), batches + 1
        history.append({"epoch": epoch, "loss": total / max(batches, 1)})
        if progress:
            print(f"epoch {epoch}/{cfg.epochs} loss {total / max(batches, 1):.4f}", file=sys.stderr)
    head.eval()
    return head, history


def head_embeddings(head: torch.nn.Module, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Unit-norm head outputs of rows ``x`` (zero rows stay zero), float32."""
    import torch

    from .fusion import l2_normalise

    ok = np.abs(x).sum(axis=1) > 0
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.as_tensor(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))
            out.append(head(xb).numpy())
    z = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return np.where(ok[:, None], l2_normalise(z), 0.0).astype(np.float32)


def build_encoder(head: torch.nn.Module, base: torch.nn.Module | None = None) -> torch.nn.Module:
    """``pixels -> head(normalise(base(pixels)))`` in eval mode (base: EfficientNet-Lite0)."""
    import torch
    import torch.nn.functional as F

    from .export import build_torch_model

    class SimilarityEncoder(torch.nn.Module):
        def __init__(self, base: torch.nn.Module, head: torch.nn.Module) -> None:
            super().__init__()
            self.base, self.head = base, head

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.head(F.normalize(self.base(pixels), dim=1, eps=1e-12))

    return SimilarityEncoder(base if base is not None else build_torch_model(), head).eval()


def image_parity(model: torch.nn.Module, onnx_path: Path, paths: Sequence[Path]) -> float:
    """Max |torch - onnxruntime| of the raw outputs on real images; raises above 1e-4."""
    import onnxruntime as ort
    import torch

    from .preprocess import load_image, preprocess

    x = preprocess([load_image(p) for p in paths], INPUT_SIZE).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    diff = float(np.abs(ref - got).max())
    if got.shape != ref.shape or diff > PARITY_TOL:
        raise RuntimeError(f"ONNX vs torch on images: shape {got.shape}, max diff {diff:.2e}")
    return diff


def export_similarity_model(
    head: torch.nn.Module, out_dir: Path, metadata: dict[str, Any] | None = None
) -> tuple[str, Path, torch.nn.Module, float]:
    """Export base + head; returns (model id, ONNX path, the torch encoder, random-input
    parity). The file lands in ``<out_dir>/similarity-efficientnet_lite0/``."""
    from .distill import export_embedding_model

    model = build_encoder(head)
    model_id, path, diff = export_embedding_model(model, INPUT_SIZE, out_dir, NAME, metadata)
    return model_id, path, model, diff


def train_similarity(
    x: np.ndarray,
    labels: np.ndarray,
    colours: np.ndarray,
    groups: np.ndarray,
    cfg: SimilarityConfig = SimilarityConfig(),
    holdout: float = 0.2,
    progress: bool = False,
) -> dict[str, Any]:
    """Split by ``groups``, train on the rest, compare baseline vs head on the held-out part.

    Returns the metrics with ``_head`` (the torch head), ``_train`` / ``_test`` (row indices).
    """
    from streams.eval.catalogue import (
        embedded_mask,
        joint_labels,
        nearest_neighbours,
        precision_at_k,
        split_holdout,
    )

    t0 = time.perf_counter()
    labels, colours, groups = (np.asarray(a) for a in (labels, colours, groups))
    joint = joint_labels(labels, colours)
    ok = embedded_mask(x)
    tr, te = split_holdout(len(x), groups, holdout, cfg.seed)
    tr, te = tr[ok[tr]], te[ok[te]]
    head, history = train_head(x[tr], labels[tr], colours[tr], cfg, progress)
    train_s = time.perf_counter() - t0

    def scores(v: np.ndarray) -> dict[str, float]:
        nb, _ = nearest_neighbours(v[te], 10, groups[te])
        return {
            "precision_at_10": precision_at_k(nb, labels[te]),
            "precision_at_10_label_colour": precision_at_k(nb, joint[te]),
        }

    base, tuned = scores(x), scores(head_embeddings(head, x))
    return {
        "n_items": int(len(x)),
        "n_train": int(len(tr)),
        "n_heldout": int(len(te)),
        "split": f"by group, held-out fraction {holdout}, seed {cfg.seed}",
        "heldout_baseline": base,
        "heldout_finetuned": tuned,
        "history": history,
        "train_seconds": round(train_s, 1),
        "config": cfg.as_dict(),
        "_head": head,
        "_train": tr,
        "_test": te,
    }


# ------------------------------------------------------------------ CLI


def add_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``vrec train similarity``."""
    d = SimilarityConfig()
    p.add_argument("--items", type=Path, default=None, help="catalogue CSV (default: H&M)")
    p.add_argument("--map", default=None, help="field=column,... or hm (default: hm)")
    p.add_argument("--label", default="product_type_name")
    p.add_argument("--colour", default="colour_group_name")
    p.add_argument("--group", default="product_code", help="split column ('' = by item)")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--weak", type=float, default=d.weak, help="weight of same-label positives")
    p.add_argument(
        "--colour-weak", type=float, default=d.colour_weak, help="weight of same-colour positives"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=None, help="models dir (default: settings)")
    p.add_argument("--cache", type=Path, default=None, help="embedding cache sqlite file")
    p.add_argument("--no-export", action="store_true", help="measure only")
    p.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> int:
    """``vrec train similarity``: train, measure, export, check parity; prints the table."""
    from streams.eval.catalogue import column_map, image_vectors, read_catalogue

    from .cache import EmbeddingCache
    from .export import ensure_model

    log = log or (lambda s: print(s, file=sys.stderr))
    from streams.eval.data import DEFAULT_HM_DIR
    from streams.settings import get_settings

    s = get_settings()
    out_dir = args.out if args.out is not None else s.model_dir
    items = args.items if args.items is not None else Path(DEFAULT_HM_DIR) / "items.csv"
    cat = read_catalogue(items, column_map(args.map))
    base_path = ensure_model(s.model_dir)
    with EmbeddingCache(args.cache) as cache:
        x, base_id = image_vectors(cat, base_path, cache, not args.no_progress)
    if x.shape[1] != EMBED_DIM:
        raise SystemExit(f"base encoder gives {x.shape[1]}-d vectors, expected {EMBED_DIM}")
    groups = cat.column(args.group) if args.group else np.arange(len(x)).astype(str)
    cfg = SimilarityConfig(
        dim=args.dim,
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        weak=args.weak,
        colour_weak=args.colour_weak,
        seed=args.seed,
    )
    m = train_similarity(
        x, cat.column(args.label), cat.column(args.colour), groups, cfg, args.holdout,
        progress=not args.no_progress,
    )  # fmt: skip
    head, te = m.pop("_head"), m.pop("_test")
    m.pop("_train")
    m.update(base_model_id=base_id, label=args.label, colour=args.colour, group=args.group)
    b, f = m["heldout_baseline"], m["heldout_finetuned"]
    lines = [
        f"held-out {m['n_heldout']} items ({m['split']}); train {m['n_train']}",
        f"{'':<12} {'P@10 ' + args.label:>28} {'P@10 label+colour':>20}",
        *(
            f"{name:<12} {r['precision_at_10']:>28.4f} {r['precision_at_10_label_colour']:>20.4f}"
            for name, r in (("baseline", b), ("fine-tuned", f))
        ),
    ]
    if not args.no_export:
        from .distill import metrics_path, write_json
        from .image import ImageEncoder

        model_id, path, model, diff = export_similarity_model(
            head, out_dir, {"base": base_id, "label": args.label, "colour": args.colour}
        )
        sample = [cat.images[i] for i in te[:8].tolist() if cat.images[i] is not None]
        img_diff = image_parity(model, path, sample)
        enc = ImageEncoder(path, device="cpu")
        if enc.model_id != model_id:
            raise RuntimeError(f"model id {enc.model_id} != {model_id}")
        heldout = path.with_name(path.stem + ".heldout.csv")
        _write_rows(heldout, [cat.rows[i] for i in te.tolist()], cat)
        m.update(
            model_id=model_id,
            onnx=str(path),
            dim=enc.dim,
            onnx_max_abs_diff_random=diff,
            onnx_max_abs_diff_images=img_diff,
            parity_images=len(sample),
            heldout_items=str(heldout),
        )
        write_json(metrics_path(path), m)
        lines += [
            f"exported {model_id} -> {path} (dim {enc.dim}; ONNX vs torch max |diff| "
            f"{img_diff:.1e} on {len(sample)} images, {diff:.1e} on random input)",
            f"held-out rows: {heldout}",
            f"VREC_ENCODER_MODEL={path.parent}",
        ]
    print("\n".join(lines))
    if args.no_export:
        print(json.dumps({k: v for k, v in m.items() if k != "history"}, indent=2))
    return 0


def _write_rows(path: Path, rows: list[dict[str, str]], cat: Any) -> None:
    """Catalogue rows to CSV with the image column made absolute (the file moves freely)."""
    image_col = cat.cmap.fields["image"][0]
    root = Path(cat.path).resolve().parent
    fields = list(rows[0]) if rows else [cat.cmap.fields["id"][0], image_col]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            img = r.get(image_col)
            w.writerow({**r, image_col: str(root / img) if img else ""})
