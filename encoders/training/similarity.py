"""``vrec train similarity``: a colour-aware projection head on the frozen EfficientNet-Lite0.

A shop that wants "more like this" usually means the same kind of product in the same colour;
the ImageNet features rank a black top next to a black T-shirt about as readily as a white
T-shirt. This trains a small head ``h`` (standardise, 1280 -> 512 -> ReLU -> 256) on the cached,
L2-normalised 1280-d catalogue embeddings, by default with a colour branch appended to its input:
the preprocessed pixels averaged over an 8 x 8 grid (192 values, cached like embeddings; the
exported graph computes it from ``pixels`` itself). Training reads no pixels besides that grid,
so it takes about a minute on 2 CPU cores. The loss is a graded supervised-contrastive loss:

    loss_i = - sum_j w_ij log softmax_j(cos(h(x_i), h(x_j)) / T) / sum_j w_ij   (j != i, in-batch)

with ``w_ij = 1`` for the same label *and* colour (the positive class), ``w_ij = weak`` for the
same label only (a weaker positive; default 0: on H&M, 0.1-0.3 kept more same-type precision but
lost most of the colour gain), ``colour_weak`` for the same colour only (default 0) and 0
otherwise. Items are split by ``--group`` (e.g. ``product_code``): the head never sees the
held-out products, on which the baseline (the raw embeddings) and the head are compared
(precision@10 of same label, and of same label + colour, :mod:`vrec_tools.eval.catalogue`;
neighbours of the same group left out).

Export: the graph ``pixels (N, 3, 224, 224) -> embedding (N, dim)`` is the base encoder
(:func:`encoders.training.export.build_torch_model`), an L2 normalisation (the space the head was
trained on), the colour grid (``avg_pool2d`` of the pixels) and the head, so it keeps the
``pixels -> embedding`` contract and :class:`ImageEncoder` loads it
(``VREC_ENCODER_MODEL=<models>/similarity-efficientnet_lite0``). Files, as
:mod:`encoders.training.distill`: ``<models>/similarity-efficientnet_lite0/<sha12>.onnx`` (metadata
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

from encoders.image import EMBED_DIM, INPUT_NAME, INPUT_SIZE, OUTPUT_NAME

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
    "catalogue_colour_grids",
    "colour_grid",
    "head_embeddings",
    "head_input",
    "image_parity",
    "run_cli",
    "train_head",
    "train_similarity",
]

NAME = "similarity-efficientnet_lite0"
PARITY_TOL = 1e-4
#: The optional colour branch: the preprocessed pixels averaged over a GRID x GRID grid of
#: blocks (3 * GRID^2 values in [-1, 1]) times SCALE (norm <= 1, like the unit base vector),
#: concatenated to the base vector before the head. Cached like embeddings under COLOUR_ID.
COLOUR_GRID = 8
COLOUR_DIM = 3 * COLOUR_GRID * COLOUR_GRID
COLOUR_SCALE = float(COLOUR_DIM**-0.5)
COLOUR_ID = f"colour-grid{COLOUR_GRID}-v1"


@dataclass(frozen=True)
class SimilarityConfig:
    dim: int = 256  # output embedding size
    hidden: int = 512  # 0: a linear head
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    weak: float = 0.0  # weight of same-label (other colour) positives
    colour_weak: float = 0.0  # weight of same-colour (other label) positives
    per_class: int = 0  # > 0: batches of batch_size / per_class label+colour classes x per_class
    colour_grid: bool = True  # add the pixel colour-grid branch (COLOUR_GRID) to the head input
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_head(
    in_dim: int,
    cfg: SimilarityConfig,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> torch.nn.Module:
    """Standardise (``(x - mean) / std``, the training rows' statistics; identity if not
    given), then Linear, or Linear-ReLU-Linear, from ``in_dim`` to ``cfg.dim``."""
    import torch
    from torch import nn

    class Standardise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            m = np.zeros(in_dim, np.float32) if mean is None else mean
            sd = np.ones(in_dim, np.float32) if std is None else std
            self.register_buffer("mean", torch.as_tensor(m, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(sd, dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

    if cfg.hidden > 0:
        layers = [nn.Linear(in_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim)]
    else:
        layers = [nn.Linear(in_dim, cfg.dim)]
    return nn.Sequential(Standardise(), *layers)


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

    from vrec_tools.eval.catalogue import joint_labels

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    lab = torch.as_tensor(np.unique(np.asarray(labels, dtype=str), return_inverse=True)[1])
    col = torch.as_tensor(np.unique(np.asarray(colours, dtype=str), return_inverse=True)[1])
    joint = joint_labels(np.asarray(labels, dtype=str), np.asarray(colours, dtype=str))
    jnt = torch.as_tensor(np.unique(joint, return_inverse=True)[1])
    # std floored at a tenth of the median dimension's: a near-constant input (a background
    # block of the colour grid in a small catalogue) would otherwise amplify float32 rounding
    # past the 1e-4 ONNX parity tolerance
    std = x.std(axis=0)
    head = build_head(xt.shape[1], cfg, x.mean(axis=0), np.maximum(std, 0.1 * np.median(std)))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, -(-len(xt) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    history: list[dict[str, float]] = []
    head.train()
    for epoch in range(1, cfg.epochs + 1):
        total, batches = 0.0, 0
        for idx in _batches(jnt, cfg, gen):
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


def _batches(joint: torch.Tensor, cfg: SimilarityConfig, gen: torch.Generator) -> list[Any]:
    """One epoch of row-index batches: a shuffle, or (``per_class``) class-balanced batches of
    ``batch_size // per_class`` label+colour classes (of two rows or more, drawn in proportion
    to the square root of their size) with ``per_class`` rows each (drawn with replacement), so
    that every row has same label + colour positives in the batch."""
    import torch

    n = len(joint)
    if cfg.per_class <= 0:
        perm = torch.randperm(n, generator=gen)
        return [perm[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    classes, inverse = torch.unique(joint, return_inverse=True)
    order = torch.argsort(inverse)
    counts = torch.bincount(inverse, minlength=len(classes))
    starts = torch.cumsum(counts, 0) - counts
    n_cls = max(1, cfg.batch_size // cfg.per_class)
    weight = counts.double().sqrt() * (counts > 1)  # classes with a positive, sqrt-balanced
    if weight.sum() == 0:
        weight = torch.ones(len(classes), dtype=torch.double)
    out = []
    for _ in range(max(1, -(-n // cfg.batch_size))):
        pick = torch.multinomial(weight, n_cls, replacement=True, generator=gen)
        offs = (torch.rand(n_cls, cfg.per_class, generator=gen) * counts[pick, None]).long()
        out.append(order[(starts[pick, None] + offs).reshape(-1)])
    return out


def head_embeddings(head: torch.nn.Module, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Unit-norm head outputs of rows ``x`` (zero rows stay zero), float32."""
    import torch

    from encoders.fusion import l2_normalise

    ok = np.abs(x).sum(axis=1) > 0
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.as_tensor(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))
            out.append(head(xb).numpy())
    z = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return np.where(ok[:, None], l2_normalise(z), 0.0).astype(np.float32)


def colour_grid(pixels: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) preprocessed pixels -> (N, COLOUR_DIM) block means times COLOUR_SCALE (the
    graph's ``avg_pool2d(pixels, S // GRID)``; S must be a multiple of GRID)."""
    n, c, h, w = pixels.shape
    g, b = COLOUR_GRID, h // COLOUR_GRID
    blocks = np.asarray(pixels, np.float32).reshape(n, c, g, b, g, w // g).mean(axis=(3, 5))
    return (blocks.reshape(n, c * g * g) * COLOUR_SCALE).astype(np.float32)


def catalogue_colour_grids(
    paths: Sequence[Path | None], cache: Any, workers: int = 2, chunk: int = 256
) -> np.ndarray:
    """:func:`colour_grid` of each image (zero rows: missing / undecodable), cached in the
    embedding cache under :data:`COLOUR_ID` by image sha256."""
    from concurrent.futures import ThreadPoolExecutor

    from encoders.preprocess import ImageError, load_image, preprocess
    from streams.util import sha256_file

    def digest(p: Path | None) -> str | None:
        try:
            return sha256_file(p) if p is not None else None
        except OSError:
            return None

    def one(p: Path) -> np.ndarray | None:
        try:
            return colour_grid(preprocess([load_image(p)], INPUT_SIZE))[0]
        except (ImageError, OSError):
            return None

    hashes = [digest(p) for p in paths]
    known = cache.get_many(COLOUR_ID, {h for h in hashes if h})
    todo = list({h: p for h, p in zip(hashes, paths) if h and h not in known}.items())
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            new = {h: v for (h, _), v in zip(part, pool.map(one, [p for _, p in part]))}
            new = {h: v for h, v in new.items() if v is not None}
            cache.put_many(COLOUR_ID, new)
            known.update(new)
    out = np.zeros((len(paths), COLOUR_DIM), np.float32)
    for i, h in enumerate(hashes):
        if h in known:
            out[i] = known[h]
    return out


def head_input(x: np.ndarray, grids: np.ndarray | None) -> np.ndarray:
    """The head's input rows: the base vectors, with the colour grids appended if given."""
    return x if grids is None else np.concatenate([x, grids], axis=1).astype(np.float32)


def build_encoder(
    head: torch.nn.Module, base: torch.nn.Module | None = None, colour: bool = False
) -> torch.nn.Module:
    """``pixels -> head(normalise(base(pixels)) [+ colour grid])`` in eval mode (base:
    EfficientNet-Lite0; ``colour``: append the :func:`colour_grid` branch)."""
    import torch
    import torch.nn.functional as F

    from encoders.training.export import build_torch_model

    block = INPUT_SIZE // COLOUR_GRID

    class SimilarityEncoder(torch.nn.Module):
        def __init__(self, base: torch.nn.Module, head: torch.nn.Module) -> None:
            super().__init__()
            self.base, self.head = base, head

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            f = F.normalize(self.base(pixels), dim=1, eps=1e-12)
            if colour:
                g = F.avg_pool2d(pixels, block).flatten(1) * COLOUR_SCALE
                f = torch.cat([f, g], dim=1)
            return self.head(f)

    return SimilarityEncoder(base if base is not None else build_torch_model(), head).eval()


def image_parity(model: torch.nn.Module, onnx_path: Path, paths: Sequence[Path]) -> float:
    """Max |torch - onnxruntime| of the raw outputs on real images; raises above 1e-4."""
    import onnxruntime as ort
    import torch

    from encoders.preprocess import load_image, preprocess

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
    head: torch.nn.Module,
    out_dir: Path,
    metadata: dict[str, Any] | None = None,
    colour: bool = False,
) -> tuple[str, Path, torch.nn.Module, float]:
    """Export base (+ colour grid) + head; returns (model id, ONNX path, the torch encoder,
    random-input parity). The file lands in ``<out_dir>/similarity-efficientnet_lite0/``."""
    from encoders.training.distill import export_embedding_model

    model = build_encoder(head, colour=colour)
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
    grids: np.ndarray | None = None,
) -> dict[str, Any]:
    """Split by ``groups``, train on the rest, compare baseline (``x``) vs the head (on ``x``
    and, if given, the colour ``grids``) on the held-out part.

    Returns the metrics with ``_head`` (the torch head), ``_train`` / ``_test`` (row indices).
    """
    from vrec_tools.eval.catalogue import (
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
    xin = head_input(x, grids)
    head, history = train_head(xin[tr], labels[tr], colours[tr], cfg, progress)
    train_s = time.perf_counter() - t0

    def scores(v: np.ndarray) -> dict[str, float]:
        nb, _ = nearest_neighbours(v[te], 10, groups[te])
        return {
            "precision_at_10": precision_at_k(nb, labels[te]),
            "precision_at_10_label_colour": precision_at_k(nb, joint[te]),
        }

    base, tuned = scores(x), scores(head_embeddings(head, xin))
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
    p.add_argument("--map-file", type=Path, default=None, help="the column map as JSON")
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
    p.add_argument("--per-class", type=int, default=d.per_class, help="class-balanced batches")
    p.add_argument(
        "--colour-grid",
        action=argparse.BooleanOptionalAction,
        default=d.colour_grid,
        help=f"add the {COLOUR_GRID}x{COLOUR_GRID} pixel colour-grid branch to the head",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=None, help="models dir (default: settings)")
    p.add_argument("--cache", type=Path, default=None, help="embedding cache sqlite file")
    p.add_argument("--no-export", action="store_true", help="measure only")
    p.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> int:
    """``vrec train similarity``: train, measure, export, check parity; prints the table."""
    from encoders.cache import EmbeddingCache
    from encoders.registry import ensure_model
    from vrec_tools.eval.catalogue import column_map, image_vectors, read_catalogue

    log = log or (lambda s: print(s, file=sys.stderr))
    from streams.settings import get_settings
    from vrec_tools.eval.data import DEFAULT_HM_DIR

    s = get_settings()
    out_dir = args.out if args.out is not None else s.model_dir
    items = args.items if args.items is not None else Path(DEFAULT_HM_DIR) / "items.csv"
    cat = read_catalogue(items, column_map(args.map, args.map_file))
    base_path = ensure_model(s.model_dir)
    with EmbeddingCache(args.cache) as cache:
        x, base_id = image_vectors(cat, base_path, cache, not args.no_progress)
        grids = catalogue_colour_grids(cat.images, cache) if args.colour_grid else None
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
        per_class=args.per_class,
        colour_grid=args.colour_grid,
        seed=args.seed,
    )
    m = train_similarity(
        x, cat.column(args.label), cat.column(args.colour), groups, cfg, args.holdout,
        progress=not args.no_progress, grids=grids,
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
        from encoders.image import ImageEncoder
        from encoders.training.distill import metrics_path, write_json

        model_id, path, model, diff = export_similarity_model(
            head, out_dir, {"base": base_id, "label": args.label, "colour": args.colour,
                            "colour_grid": cfg.colour_grid}, colour=cfg.colour_grid,
        )  # fmt: skip
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
