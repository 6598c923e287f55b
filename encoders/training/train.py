"""``vrec train ...``: training commands over the frozen image embeddings.

``vrec train classify [--target product_type_name|product_group_name|all] [--epochs N]
[--seed S] [--items CSV] [--out DIR] [--hidden H] [--min-count N] [--limit N]`` trains a
softmax head (see :mod:`encoders.classify`) on the cached catalogue embeddings, prints the
top-1/top-5 table against the majority-class baseline, exports the ONNX head + labels and
writes ``<sha12>.metrics.json`` next to it.

``vrec train classify --label COLUMN [--items FILE --map SPEC | --map-file JSON] [--group COL]
[--split 0.8,0.1,0.1]`` does the same for any column of any catalogue (CSV / JSONL / Parquet,
read and validated by :mod:`vrec_tools.catalogue_import`; default the H&M items and map), split by
the ``--group`` column (else by item), and prints a per-class report. The head fills that label
(``category`` when the column is the map's category, else the column's name, an attribute of
the upload) for uploads without it.

``vrec train distill [--limit N] [--epochs N] [--seed S] [--size PX] [--out DIR] ...`` distils
the EfficientNet-Lite0 encoder into a faster MobileNetV2 student
(see :mod:`encoders.training.distill`).

``vrec train adversarial [--limit N] [--epochs N] [--seed S] [--eps LEVELS] [--out DIR] ...``
fine-tunes the encoder's last blocks against adversarial and realistic perturbations (see
:mod:`encoders.training.adversarial`).

``vrec train multimodal [--parts classify,neighbours,eval] [--weights W,...] ...`` measures what
the text embedding adds to the image embedding (see :mod:`encoders.training.multimodal`).

``vrec train similarity --label COLUMN --colour COLUMN [--group COLUMN]`` trains a colour-aware
projection head on the frozen encoder and exports base + head
(see :mod:`encoders.training.similarity`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from encoders.training.classify import (
    TARGETS,
    HeadConfig,
    run_classify,
)

__all__ = ["add_classify_args", "main", "run_classify", "run_classify_cli"]


def add_classify_args(p: argparse.ArgumentParser) -> None:
    """``vrec train classify``'s arguments."""
    p.add_argument("--target", choices=[*TARGETS, "all"], default="product_type_name")
    p.add_argument("--label", help="any catalogue column (or mapped field) to predict")
    p.add_argument("--group", help="split by this column (e.g. product_code); else by item")
    p.add_argument("--map", dest="map_spec", help="--items column map: field=column,... | hm")
    p.add_argument("--map-file", type=Path, help="--items column map as JSON")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions")
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


def run_classify_cli(args: argparse.Namespace) -> int:
    """``vrec train classify``: a head for ``--label`` (any catalogue) or ``--target`` (H&M)."""
    return _classify_label(args) if args.label else _classify(args)


def main(argv: list[str] | None = None) -> int:
    """``vrec train <command> ...`` without the ``vrec`` (tests call this): each command's
    parser from its own ``add_args``, as ``vrec train`` builds it, then its handler."""
    from encoders.training import adversarial, distill, multimodal, similarity

    commands = {
        "classify": (add_classify_args, run_classify_cli),
        "distill": (distill.add_args, distill.run_cli),
        "adversarial": (adversarial.add_args, adversarial.run_cli),
        "multimodal": (multimodal.add_args, multimodal.run_cli),
        "similarity": (similarity.add_args, similarity.run_cli),
    }
    ap = argparse.ArgumentParser(prog="vrec train", description="Train heads on image embeddings")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (add, run) in commands.items():
        p = sub.add_parser(name)
        add(p)
        p.set_defaults(_run=run)
    args = ap.parse_args(sys.argv[1:] if argv is None else list(argv))
    return args._run(args)


# ------------------------------------------------------------------ classify


def _load(args: argparse.Namespace) -> tuple[Any, np.ndarray, float]:
    from vrec_tools.eval.baselines import catalogue_embeddings
    from vrec_tools.eval.data import DEFAULT_HM_DIR, load_items

    t0 = time.perf_counter()
    items = load_items(args.items if args.items is not None else DEFAULT_HM_DIR)
    if args.limit and args.limit < len(items):
        items = _head_items(items, args.limit)
    x = catalogue_embeddings(items, args.cache, progress=not args.no_progress)
    return items, x, time.perf_counter() - t0


def _head_items(items: Any, n: int) -> Any:
    from vrec_tools.eval.data import Items

    return Items(
        root=items.root,
        article_id=items.article_id[:n],
        product_code=items.product_code[:n],
        product_type=items.product_type[:n],
        image_path=items.image_path[:n],
        rows=items.rows[:n],
    )


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


def _head_config(args: argparse.Namespace) -> HeadConfig:
    """The classifier head's training settings from the command line."""
    return HeadConfig(
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
    )


def _classify(args: argparse.Namespace) -> int:
    from streams.settings import get_settings

    out_dir = args.out if args.out is not None else get_settings().model_dir
    items, x, load_s = _load(args)
    print(f"loaded {len(items)} items, embeddings {x.shape} in {load_s:.1f}s", file=sys.stderr)
    targets = TARGETS if args.target == "all" else (args.target,)
    cfg = _head_config(args)
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


def format_per_class(m: dict[str, Any]) -> str:
    """The per-class report of one head's test split, most trained classes first."""
    head = f"{'class':<28} {'train':>6} {'test':>5} {'prec':>6} {'recall':>6} {'top5':>6}"
    lines = [f"{m['target']}: per class (test split)", head, "-" * len(head)]

    def num(v: float | None) -> str:
        return f"{'-':>6}" if v is None else f"{v:>6.3f}"

    for r in m["per_class"]:
        lines.append(
            f"{r['label'][:28]:<28} {r['n_train']:>6} {r['n_test']:>5} {num(r['precision'])} "
            f"{num(r['recall'])} {num(r['top5_recall'])}"
        )
    return "\n".join(lines)


def _split(text: str) -> tuple[float, float, float]:
    parts = tuple(float(x) for x in text.split(","))
    if len(parts) != 3:
        raise ValueError(f"--split needs three fractions, got {text!r}")
    return parts  # type: ignore[return-value]


def load_labelled(
    path: Path,
    cmap: Any,
    label: str,
    group: str | None = None,
    limit: int | None = None,
) -> tuple[list[Path], np.ndarray, np.ndarray, dict[str, int]]:
    """(image paths, labels, groups, skipped counts) of a catalogue's valid rows that have a
    label and an image file. ``label`` / ``group``: a column of the file or a field /
    attribute of the map; without ``group`` every item is its own group."""
    from vrec_tools.catalogue_import import plan_import

    plan = plan_import(path, cmap, limit=limit, check_images=True)
    skipped = dict(plan.by_reason())
    paths, labels, groups = [], [], []
    for a in plan.accepted:
        value = _value(a, cmap, label)
        if value is None:
            skipped["no label"] = skipped.get("no label", 0) + 1
            continue
        if not a.product.image_path:
            skipped["no image file"] = skipped.get("no image file", 0) + 1
            continue
        paths.append(Path(a.product.image_path))
        labels.append(value)
        groups.append((_value(a, cmap, group) if group else None) or f"item:{a.product.item_id}")
    return paths, np.array(labels, dtype=str), np.array(groups, dtype=str), skipped


def _value(accepted: Any, cmap: Any, name: str) -> str | None:
    """A row's value of ``name``: the column of that name, else the mapped field / attribute."""
    from vrec_tools.catalogue_import import cell_text

    if name in accepted.values:
        text = cell_text(accepted.values[name])
        return text.strip() if text else None
    hit = cmap.column_of(name)
    if hit is None:
        raise ValueError(f"no column {name!r} in the catalogue (nor a mapped field of that name)")
    kind, mapped = hit
    if kind == "attribute":
        return accepted.product.label(mapped)
    cols = cmap.fields[mapped]
    return _value(accepted, cmap, cols[0]) if len(cols) == 1 and cols[0] != name else None


def label_field(cmap: Any, label: str) -> str:
    """The upload label a head for ``label`` fills: ``category`` when ``label`` is (the column
    of) the map's category, an attribute's name when it is one, else ``label`` itself."""
    hit = cmap.column_of(label)
    if hit is None or (hit[0] == "field" and hit[1] != "category"):
        return label
    return hit[1]


def _classify_label(args: argparse.Namespace) -> int:
    from encoders import ImageEncoder
    from encoders.cache import EmbeddingCache, embed_catalogue
    from encoders.registry import ensure_model
    from streams.settings import get_settings
    from vrec_tools.catalogue_import import HM_MAP, column_map
    from vrec_tools.eval.data import DEFAULT_HM_DIR

    settings = get_settings()
    out_dir = args.out if args.out is not None else settings.model_dir
    path = Path(args.items) if args.items is not None else Path(DEFAULT_HM_DIR)
    path = path / "items.csv" if path.is_dir() else path
    try:
        cmap = (
            column_map(args.map_spec, args.map_file) if args.map_spec or args.map_file else HM_MAP
        )
        fractions = _split(args.split)
        t0 = time.perf_counter()
        paths, raw, groups, skipped = load_labelled(
            path, cmap, args.label, args.group, args.limit or None
        )
    except ValueError as exc:
        print(f"vrec train classify: {exc}", file=sys.stderr)
        return 2
    if len(paths) < 3:
        print(f"vrec train classify: {len(paths)} labelled rows in {path}", file=sys.stderr)
        return 2
    encoder = ImageEncoder(ensure_model(settings.model_dir), device="cpu")
    with EmbeddingCache(args.cache) as cache:
        x = embed_catalogue(encoder, paths, cache, progress=not args.no_progress, errors="zero")
    skips = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"
    print(
        f"loaded {len(paths)} labelled items of {path} ({args.label!r}; skipped: {skips}), "
        f"embeddings {x.shape} in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    cfg = _head_config(args)
    m = run_classify(
        x,
        raw,
        groups,
        args.label,
        cfg,
        min_count=args.min_count,
        out_dir=out_dir,
        progress=not args.no_progress,
        fractions=fractions,
        field=label_field(cmap, args.label),
        group_name=args.group or "item",
    )
    m.pop("_model")
    m["skipped"] = skipped  # rows not trained on, by reason
    metrics_path = Path(m["onnx"]).with_name(Path(m["onnx"]).stem + ".metrics.json")
    metrics_path.write_text(json.dumps(m, indent=2) + "\n")
    print(
        f"{args.label}: {m['model_id']} -> {m['onnx']} fills {m['field']!r} "
        f"(split by {m['group']}; onnx vs torch max |diff| {m['onnx_max_abs_diff']:.2e})",
        file=sys.stderr,
    )
    print(format_table([m]))
    print(format_per_class(m))
    return 0
