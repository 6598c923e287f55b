"""``vrec train ...``: training commands over the frozen image embeddings.

``vrec train classify [--target product_type_name|product_group_name|all] [--epochs N]
[--seed S] [--items CSV] [--out DIR] [--hidden H] [--min-count N] [--limit N]`` trains a
softmax head (see :mod:`encoders.classify`) on the cached catalogue embeddings, prints the
top-1/top-5 table against the majority-class baseline, exports the ONNX head + labels and
writes ``<sha12>.metrics.json`` next to it.

``vrec train distill [--limit N] [--epochs N] [--seed S] [--size PX] [--out DIR] ...`` distils
the EfficientNet-Lite0 encoder into a faster MobileNetV2 student (see :mod:`encoders.distill`).

``vrec train adversarial [--limit N] [--epochs N] [--seed S] [--eps LEVELS] [--out DIR] ...``
fine-tunes the encoder's last blocks against adversarial and realistic perturbations (see
:mod:`encoders.adversarial`).

``vrec train multimodal [--parts classify,neighbours,eval] [--weights W,...] ...`` measures what
the text embedding adds to the image embedding (see :mod:`encoders.multimodal`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .classify import (
    TARGETS,
    HeadConfig,
    encode_labels,
    export_head,
    group_split,
    head_probabilities,
    majority_baseline,
    topk_accuracy,
    train_head,
)

__all__ = ["main", "run_classify"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vrec train", description="Train heads on image embeddings")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("classify", help="softmax head: product_type_name / product_group_name")
    p.add_argument("--target", choices=[*TARGETS, "all"], default="product_type_name")
    p.add_argument("--epochs", type=int, default=200, help="max epochs (early stopping on val)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--items", type=Path, default=None, help="items.csv (default: shared H&M)")
    p.add_argument("--out", type=Path, default=None, help="models dir (default: settings)")
    p.add_argument("--cache", type=Path, default=None, help="embedding cache sqlite file")
    p.add_argument("--hidden", type=int, default=0, help="MLP hidden units (0: linear head)")
    p.add_argument("--min-count", type=int, default=10, help="rarer train classes -> 'other'")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--limit", type=int, default=0, help="use only the first N items (0: all)")
    p.add_argument("--no-progress", action="store_true")
    from . import adversarial, distill

    distill.add_args(sub.add_parser("distill", help="distil the encoder into a MobileNetV2"))
    adversarial.add_args(sub.add_parser("adversarial", help="perturbation-robust fine-tuning"))
    from . import multimodal

    multimodal.add_args(sub.add_parser("multimodal", help="image + text fusion: measurements"))
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "classify":
        return _classify(args)
    if args.command == "distill":
        from .distill import run_cli

        return run_cli(args)
    if args.command == "adversarial":
        from .adversarial import run_cli as run_adversarial_cli

        return run_adversarial_cli(args)
    if args.command == "multimodal":
        from .multimodal import run_cli as run_multimodal_cli

        return run_multimodal_cli(args)
    return 2  # pragma: no cover - argparse rejects anything else


# ------------------------------------------------------------------ classify


def _load(args: argparse.Namespace) -> tuple[Any, np.ndarray, float]:
    from streams.eval.baselines import catalogue_embeddings
    from streams.eval.data import DEFAULT_HM_DIR, load_items

    t0 = time.perf_counter()
    items = load_items(args.items if args.items is not None else DEFAULT_HM_DIR)
    if args.limit and args.limit < len(items):
        items = _head_items(items, args.limit)
    x = catalogue_embeddings(items, args.cache, progress=not args.no_progress)
    return items, x, time.perf_counter() - t0


def _head_items(items: Any, n: int) -> Any:
    from streams.eval.data import Items

    return Items(
        root=items.root,
        article_id=items.article_id[:n],
        product_code=items.product_code[:n],
        product_type=items.product_type[:n],
        image_path=items.image_path[:n],
        rows=items.rows[:n],
    )


def run_classify(
    x: np.ndarray,
    raw_labels: np.ndarray,
    groups: np.ndarray,
    target: str,
    cfg: HeadConfig,
    min_count: int = 10,
    out_dir: Path | None = None,
    progress: bool = False,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, Any]:
    """Split, train, evaluate and (with ``out_dir``) export one head; returns the metrics."""
    t0 = time.perf_counter()
    valid = np.abs(x).sum(axis=1) > 0  # rows whose image could not be embedded are zero
    idx_all = np.flatnonzero(valid)
    x, raw_labels, groups = x[idx_all], np.asarray(raw_labels)[idx_all], groups[idx_all]
    tr, va, te = group_split(groups, fractions, seed=cfg.seed)
    ls = encode_labels(raw_labels, tr, min_count=min_count)
    y = ls.y
    res = train_head(x[tr], y[tr], x[va], y[va], ls.n_classes, cfg, progress=progress)
    p_te = head_probabilities(res.model, x[te])
    p_va = head_probabilities(res.model, x[va])
    metrics: dict[str, Any] = {
        "target": target,
        "head": "linear" if cfg.hidden == 0 else f"mlp{cfg.hidden}",
        "n_items": int(len(x)),
        "n_dropped_unembedded": int((~valid).sum()),
        "n_train": int(len(tr)),
        "n_val": int(len(va)),
        "n_test": int(len(te)),
        "n_product_codes": int(len(np.unique(groups))),
        "n_raw_classes": int(len(np.unique(raw_labels))),
        "n_classes": ls.n_classes,
        "min_count": min_count,
        "rare_policy": "classes with < min_count train items -> 'other'",
        "n_rare_classes": len(ls.rare),
        "other_share_test": float(np.mean(np.asarray(ls.labels)[y[te]] == "other"))
        if len(te) and "other" in ls.labels
        else 0.0,
        "test_top1": topk_accuracy(p_te, y[te], 1),
        "test_top5": topk_accuracy(p_te, y[te], 5),
        "val_top1": topk_accuracy(p_va, y[va], 1),
        "val_top5": topk_accuracy(p_va, y[va], 5),
        "majority_top1": majority_baseline(y[tr], y[te], 1),
        "majority_top5": majority_baseline(y[tr], y[te], 5),
        "majority_class": ls.labels[int(np.bincount(y[tr]).argmax())],
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "train_seconds": round(res.seconds, 2),
        "config": cfg.as_dict(),
    }
    if out_dir is not None:
        model_id, onnx_path = export_head(
            res.model,
            ls.labels,
            target,
            out_dir,
            extra={"min_count": min_count, "rare": ls.rare, "head": metrics["head"]},
        )
        from .classify import CategoryClassifier

        clf = CategoryClassifier(onnx_path)
        diff = float(np.max(np.abs(clf.predict_proba(x[te]) - p_te))) if len(te) else 0.0
        metrics.update(model_id=model_id, onnx=str(onnx_path), onnx_max_abs_diff=diff)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        (onnx_path.with_name(onnx_path.stem + ".metrics.json")).write_text(
            json.dumps(metrics, indent=2) + "\n"
        )
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    metrics["_model"] = res.model  # not serialised; for callers that want the torch head
    return metrics


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'target':<20} {'head':<8} {'classes':>7} {'train/val/test':>17} "
        f"{'top1':>6} {'top5':>6} {'maj@1':>6} {'maj@5':>6} {'epoch':>5} {'sec':>6}"
    )
    lines = [head, "-" * len(head)]
    for m in rows:
        split = f"{m['n_train']}/{m['n_val']}/{m['n_test']}"
        lines.append(
            f"{m['target']:<20} {m['head']:<8} {m['n_classes']:>7} {split:>17} "
            f"{m['test_top1']:>6.3f} {m['test_top5']:>6.3f} {m['majority_top1']:>6.3f} "
            f"{m['majority_top5']:>6.3f} {m['best_epoch']:>5} {m['seconds']:>6.1f}"
        )
    return "\n".join(lines)


def _classify(args: argparse.Namespace) -> int:
    from streams.settings import get_settings

    out_dir = args.out if args.out is not None else get_settings().model_dir
    items, x, load_s = _load(args)
    print(f"loaded {len(items)} items, embeddings {x.shape} in {load_s:.1f}s", file=sys.stderr)
    targets = TARGETS if args.target == "all" else (args.target,)
    cfg = HeadConfig(
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
    )
    rows = []
    for target in targets:
        raw = np.array([r.get(target, "") for r in items.rows], dtype=str)
        m = run_classify(
            x,
            raw,
            items.product_code,
            target,
            cfg,
            min_count=args.min_count,
            out_dir=out_dir,
            progress=not args.no_progress,
        )
        m.pop("_model")
        rows.append(m)
        print(
            f"{target}: {m['model_id']} -> {m['onnx']} "
            f"(onnx vs torch max |diff| {m['onnx_max_abs_diff']:.2e})",
            file=sys.stderr,
        )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
