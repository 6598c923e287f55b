"""``vrec eval catalogue``: what visual similarity gives a shop, without any interactions.

    vrec eval catalogue --items FILE [--map id=...,image=...,title=...,category=... | hm]
                        --label COLUMN [--colour COLUMN] [--group COLUMN] [--json FILE]
                        [--model ONNX] [--text-weight W]

The file (CSV / TSV / JSONL / Parquet, image paths relative to its folder) and the column map
(default: the H&M preset) are read with :mod:`vrec_tools.catalogue_import`. It measures:

* ``coverage``: items whose image decoded and embedded / all items;
* ``precision_at_10``: for every embedded item, the share of its 10 nearest visual neighbours
  (cosine; the item itself and, with ``--group``, the rest of its group left out) with the same
  ``--label`` value; with ``--colour`` also ``precision_at_10_label_colour`` (same label *and*
  colour); with a text weight > 0 (``--text-weight``, default ``VREC_TEXT_WEIGHT``) the same over
  image + text fused vectors (:mod:`encoders.fusion`; text = title + category, so a category
  that is the label leaks it);
* ``classifier_top1``: a softmax head (``encoders.training.classify.run_classify``) trained on the
  embeddings, top-1 on held-out items (split by ``--group`` if given, else by item).

It writes the JSON (``--json``), a markdown summary and a PNG grid (same stem) of a few query
items with their 10 neighbours. Image paths in the JSON are relative to the JSON's folder.

The metric functions are pure (ids, vectors, labels) -> numbers and need no Kafka.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Catalogue",
    "add_args",
    "classifier_top1",
    "column_map",
    "coverage",
    "embedded_mask",
    "image_vectors",
    "main",
    "nearest_neighbours",
    "neighbour_grid",
    "precision_at_k",
    "read_catalogue",
    "run",
    "split_holdout",
]

K = 10


# ------------------------------------------------------------------ input


@dataclass(frozen=True)
class Catalogue:
    """Readable rows of a catalogue file: ids, image paths (``None`` when empty), the rows
    (values as str) and the column map (:class:`vrec_tools.catalogue_import.ColumnMap`)."""

    path: Path
    ids: list[str]
    images: list[Path | None]
    rows: list[dict[str, str]]
    cmap: Any

    def resolve(self, name: str) -> str:
        """The file column of ``name``: a column itself, or a single-column field / attribute
        of the map (``category``, ``group``, ``colour``); ``KeyError`` if neither."""
        if not self.rows or name in self.rows[0]:
            return name
        cols = self.cmap.fields.get(name) or (
            (self.cmap.attributes[name],) if name in self.cmap.attributes else ()
        )
        if len(cols) == 1 and cols[0] in self.rows[0]:
            return cols[0]
        raise KeyError(f"{self.path}: no column (or mapped field) {name!r}")

    def column(self, name: str) -> np.ndarray:
        """One column (see :meth:`resolve`) as a str array."""
        col = self.resolve(name)
        return np.array([r.get(col) or "" for r in self.rows], dtype=str)

    def text(self, field: str) -> list[str]:
        """A text field of the map (columns joined by ". "), "" where unmapped."""
        from encoders.text import join_text

        cols = self.cmap.fields.get(field, ())
        return [join_text([r.get(c) for c in cols]) for r in self.rows]


def column_map(spec: str | None = None, map_file: Path | None = None) -> Any:
    """The column map of ``--map`` (``field=column,...`` or ``hm``) or ``--map-file``, parsed
    by :mod:`vrec_tools.catalogue_import`; the H&M preset when neither is given."""
    from vrec_tools.catalogue_import import HM_MAP, load_map_file, parse_map

    if spec and map_file:
        raise ValueError("give --map or --map-file, not both")
    if map_file:
        return load_map_file(map_file)
    return parse_map(spec) if spec else HM_MAP


def read_catalogue(path: str | Path, cmap: Any) -> Catalogue:
    """Read a CSV / TSV / JSONL / Parquet catalogue (:func:`vrec_tools.catalogue_import.read_rows`);
    image paths resolve relative to the file's folder. Unreadable rows are left out."""
    from vrec_tools.catalogue_import import read_rows

    path = Path(path)
    _, source = read_rows(path)
    rows = [
        {str(k): "" if v is None else str(v) for k, v in r.values.items()}
        for r in source
        if r.values is not None
    ]
    id_col, image_col = cmap.fields["id"][0], cmap.fields.get("image", ("",))[0]
    if rows and (id_col not in rows[0] or image_col not in rows[0]):
        raise KeyError(f"{path}: the map's id={id_col} / image={image_col} columns are missing")
    root = path.resolve().parent
    images = [root / r[image_col] if r.get(image_col) else None for r in rows]
    return Catalogue(path, [r[id_col] for r in rows], images, rows, cmap)


# ------------------------------------------------------------------ metrics (pure)


def embedded_mask(vectors: np.ndarray) -> np.ndarray:
    """Rows that hold an embedding: finite and not all zero (a failed image is a zero row)."""
    v = np.asarray(vectors, dtype=np.float32)
    return np.isfinite(v).all(axis=1) & (np.abs(v).sum(axis=1) > 0)


def coverage(vectors: np.ndarray) -> float:
    """Share of items whose image was embedded (0.0 for an empty catalogue)."""
    return float(embedded_mask(vectors).mean()) if len(vectors) else 0.0


def nearest_neighbours(
    vectors: np.ndarray, k: int = K, groups: np.ndarray | None = None, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosines) of each row's ``k`` nearest rows, best first, both (N, k).

    The row itself, rows of its own group (if ``groups``) and unembedded rows are never
    neighbours; unembedded rows have no neighbours. Missing slots are -1 / -inf.
    """
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    ok = embedded_mask(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=ok[:, None])
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf, dtype=np.float32)
    g = np.asarray(groups) if groups is not None else None
    kk = min(k, n)
    for start in range(0, n, chunk):
        q = np.arange(start, min(start + chunk, n))
        s = unit[q] @ unit.T
        s[:, ~ok] = -np.inf
        s[np.arange(len(q)), q] = -np.inf
        if g is not None:
            s[g[q][:, None] == g[None, :]] = -np.inf
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk else np.zeros((len(q), 0), int)
        top_s = np.take_along_axis(s, top, axis=1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        top, top_s = np.take_along_axis(top, order, 1), np.take_along_axis(top_s, order, 1)
        top[~np.isfinite(top_s)] = -1
        top[~ok[q]] = -1
        top_s[~ok[q]] = -np.inf
        idx[q, :kk], sim[q, :kk] = top, top_s
    return idx, sim


def precision_at_k(neighbours: np.ndarray, labels: Sequence[Any] | np.ndarray) -> float:
    """Mean over queries (rows with at least one neighbour) of the share of their found
    neighbours (entries != -1) whose label equals the query's; NaN if there is no query."""
    nb = np.asarray(neighbours)
    lab = np.asarray(labels)
    found = nb >= 0
    queries = found.any(axis=1)
    if not queries.any():
        return float("nan")
    same = (lab[np.where(found, nb, 0)] == lab[:, None]) & found
    return float((same.sum(axis=1)[queries] / found.sum(axis=1)[queries]).mean())


def joint_labels(*columns: Sequence[str] | np.ndarray) -> np.ndarray:
    """One label per row that is equal exactly when every column is equal."""
    return np.array(["\x1f".join(parts) for parts in zip(*columns)], dtype=str)


def split_holdout(
    n: int, groups: np.ndarray | None = None, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: whole groups (or single items) go to one side, seeded."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    g = np.asarray(groups) if groups is not None else np.arange(n)
    uniq, inverse = np.unique(g, return_inverse=True)
    rng = np.random.default_rng(seed)
    test_groups = rng.random(len(uniq)) < test_fraction
    test = test_groups[inverse.reshape(-1)]
    return np.flatnonzero(~test), np.flatnonzero(test)


def classifier_top1(
    vectors: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    groups: np.ndarray | None = None,
    seed: int = 0,
    min_count: int = 2,
) -> dict[str, Any]:
    """Top-1 of a softmax head on held-out embedded items
    (``encoders.training.classify.run_classify``: 80/10/10 split by ``groups``, else by item;
    classes with < ``min_count`` train items -> "other"). Needs torch."""
    from encoders.training.classify import HeadConfig, run_classify

    x = np.asarray(vectors, dtype=np.float32)
    ok = embedded_mask(x)
    x = np.where(ok[:, None], x, 0.0).astype(np.float32)
    g = np.asarray(groups) if groups is not None else np.arange(len(x))
    m = run_classify(
        x, np.asarray(labels, dtype=str), g, "label", HeadConfig(seed=seed), min_count,
        group_name="group" if groups is not None else "item",
    )  # fmt: skip
    m.pop("_model", None)
    return {
        "classifier_top1": m["test_top1"],
        "classifier_top5": m["test_top5"],
        "classifier_majority_top1": m["majority_top1"],
        "classifier_classes": m["n_classes"],
        "classifier_test_items": m["n_test"],
        "classifier_split": "by group" if groups is not None else "by item",
    }


# ------------------------------------------------------------------ grid


def neighbour_grid(
    images: Sequence[Path | None],
    queries: Sequence[int],
    neighbours: np.ndarray,
    labels: np.ndarray,
    match: np.ndarray | None = None,
    cell: tuple[int, int] = (96, 144),
) -> Any:
    """A PIL image: one row per query (query first, then its neighbours); each cell shows the
    image and its label, framed green if the neighbour matches the query (``match`` labels,
    default ``labels``), red if not, blue for the query."""
    from PIL import Image, ImageDraw

    match = labels if match is None else match
    k = neighbours.shape[1]
    cw, ch = cell
    text_h = 14
    grid = Image.new("RGB", ((k + 1) * (cw + 4) + 4, len(queries) * (ch + text_h + 6) + 4), "white")
    draw = ImageDraw.Draw(grid)
    for r, q in enumerate(queries):
        y = 4 + r * (ch + text_h + 6)
        for c, i in enumerate([q, *neighbours[q].tolist()]):
            x = 4 + c * (cw + 4)
            if i < 0:
                continue
            colour = "#1f77b4" if c == 0 else ("#2ca02c" if match[i] == match[q] else "#d62728")
            draw.rectangle([x - 2, y - 2, x + cw + 1, y + ch + 1], outline=colour, width=2)
            path = images[i]
            if path is not None:
                try:
                    with Image.open(path) as im:
                        im = im.convert("RGB")
                        im.thumbnail((cw, ch))
                        grid.paste(im, (x + (cw - im.width) // 2, y + (ch - im.height) // 2))
                except OSError:
                    pass
            draw.text((x, y + ch + 2), str(labels[i])[:16], fill="black")
    return grid


# ------------------------------------------------------------------ report


def _text_vectors(cat: Catalogue, cache: Any, model_dir: Path) -> tuple[np.ndarray, str]:
    from encoders.registry import ensure_text_model
    from encoders.text import TextEncoder, upload_text
    from encoders.training.multimodal import catalogue_text_embeddings

    texts = [upload_text(t, c) for t, c in zip(cat.text("title"), cat.text("category"))]
    enc = TextEncoder(ensure_text_model(model_dir))
    return catalogue_text_embeddings(texts, enc, cache), enc.model_id


def image_vectors(
    cat: Catalogue, model: str | Path | None, cache: Any, progress: bool = False
) -> tuple[np.ndarray, str]:
    """(N, dim) unit image vectors (zero rows: no image / not decodable) and the model id;
    ``model``: an .onnx file or training folder, default VREC_ENCODER_MODEL or the export."""
    from encoders import ImageEncoder
    from encoders.cache import embed_catalogue
    from encoders.image import model_file
    from encoders.registry import ensure_model
    from streams.settings import get_settings

    s = get_settings()
    spec = model or s.encoder_model
    path = model_file(spec) if spec else ensure_model(s.model_dir)
    enc = ImageEncoder(path, device="cpu")
    present = [i for i, p in enumerate(cat.images) if p is not None]
    out = np.zeros((len(cat.images), enc.dim), dtype=np.float32)
    if present:
        paths = [cat.images[i] for i in present]
        out[present] = embed_catalogue(enc, paths, cache, progress=progress, errors="zero")
    return out, enc.model_id


def _rel(path: Path | None, base: Path) -> str | None:
    return None if path is None else os.path.relpath(Path(path).resolve(), base.resolve())


def catalogue_report(
    cat: Catalogue,
    vectors: np.ndarray,
    label: str,
    colour: str | None = None,
    group: str | None = None,
    text_vectors: np.ndarray | None = None,
    text_weight: float = 0.0,
    classify: bool = True,
    seed: int = 0,
) -> tuple[dict[str, Any], np.ndarray]:
    """The report dict and the image neighbours (N, 10) of one embedded catalogue."""
    from encoders.fusion import fuse

    labels = cat.column(label)
    groups = cat.column(group) if group else None
    nb, _ = nearest_neighbours(vectors, K, groups)
    ok = embedded_mask(vectors)
    report: dict[str, Any] = {
        "items": len(cat.ids),
        "embedded": int(ok.sum()),
        "coverage": coverage(vectors),
        "label": label,
        "colour": colour,
        "group": cat.resolve(group) if group else None,
        "k": K,
        "precision_at_10": precision_at_k(nb, labels),
        "random_precision_at_10": _random_precision(labels[ok]),
    }
    if colour:
        both = joint_labels(labels, cat.column(colour))
        report["precision_at_10_label_colour"] = precision_at_k(nb, both)
        report["random_precision_at_10_label_colour"] = _random_precision(both[ok])
    if text_vectors is not None and text_weight > 0:
        fused = np.where(ok[:, None], fuse(vectors, text_vectors, text_weight), 0.0)
        fnb, _ = nearest_neighbours(fused, K, groups)
        report["text_weight"] = text_weight
        report["precision_at_10_fused"] = precision_at_k(fnb, labels)
        if colour:
            report["precision_at_10_label_colour_fused"] = precision_at_k(fnb, both)
    if classify:
        report.update(classifier_top1(vectors, labels, groups, seed=seed))
    else:
        report["classifier_top1"] = None
    return report, nb


def _random_precision(labels: np.ndarray) -> float:
    """Expected precision of random neighbours: sum of squared label shares."""
    if len(labels) == 0:
        return float("nan")
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float((p * p).sum())


def summarise(report: Mapping[str, Any]) -> str:
    """Markdown summary of a report."""

    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    rows = [
        ("items", report["items"]),
        ("coverage (images embedded / items)", report["coverage"]),
        (f"precision@10 same {report['label']}", report["precision_at_10"]),
        ("  random neighbours", report["random_precision_at_10"]),
    ]
    if report.get("colour"):
        rows += [
            (f"precision@10 same {report['label']} + {report['colour']}",
             report["precision_at_10_label_colour"]),
            ("  random neighbours", report["random_precision_at_10_label_colour"]),
        ]  # fmt: skip
    if "precision_at_10_fused" in report:
        rows.append((f"precision@10 image+text (w={report['text_weight']}; text has the "
                     "category)", report["precision_at_10_fused"]))  # fmt: skip
        if "precision_at_10_label_colour_fused" in report:
            rows.append(("precision@10 label + colour, image+text",
                         report["precision_at_10_label_colour_fused"]))  # fmt: skip
    rows.append((f"classifier top-1 ({report.get('classifier_split', '-')})",
                 report["classifier_top1"]))  # fmt: skip
    lines = [
        f"# Catalogue quality: {report.get('catalogue', '')}",
        "",
        f"model `{report.get('model_id', '')}`",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {name} | {f(v)} |" for name, v in rows),
        "",
    ]
    if report.get("grid"):
        lines += [f"![nearest neighbours]({report['grid']})", ""]
    return "\n".join(lines)


def add_args(ap: argparse.ArgumentParser) -> None:
    """``vrec eval catalogue``'s arguments."""
    ap.add_argument("--items", type=Path, required=True, help="catalogue CSV/JSONL/Parquet")
    ap.add_argument("--map", default=None, help="field=column,... or hm (default: hm)")
    ap.add_argument("--map-file", type=Path, default=None, help="the column map as JSON")
    ap.add_argument("--label", required=True, help="column (or mapped field) to share")
    ap.add_argument("--colour", default=None, help="colour column (label + colour precision)")
    ap.add_argument("--group", default=None, help="group column (default: the map's group; "
                    "'' for none): a group's items are not each other's neighbours, and the "
                    "classifier is split by group")  # fmt: skip
    ap.add_argument("--json", type=Path, default=Path("catalogue_report.json"))
    ap.add_argument("--model", default=None, help="image encoder .onnx or training folder")
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache sqlite file")
    ap.add_argument(
        "--text-weight",
        type=float,
        default=None,
        help="image+text fusion weight (default VREC_TEXT_WEIGHT; 0: image only)",
    )
    ap.add_argument("--queries", type=int, default=6, help="query rows in the PNG grid")
    ap.add_argument("--no-classifier", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    """``vrec eval catalogue`` from ``argv`` (tests call this): :func:`add_args`, :func:`run`."""
    ap = argparse.ArgumentParser(prog="vrec eval catalogue", description=__doc__.split("\n\n")[0])
    add_args(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """``vrec eval catalogue``: the report, its summary and the neighbour grid."""
    from encoders.cache import EmbeddingCache
    from streams.settings import get_settings

    t0 = time.perf_counter()
    s = get_settings()
    cat = read_catalogue(args.items, column_map(args.map, args.map_file))
    group = args.group
    if group is None and "group" in cat.cmap.fields and cat.rows:
        group = "group" if cat.cmap.fields["group"][0] in cat.rows[0] else None
    group = group or None
    cache_path = args.cache or (Path(s.embedding_cache) if s.embedding_cache else None)
    w = s.text_weight if args.text_weight is None else float(args.text_weight)
    with EmbeddingCache(cache_path) as cache:
        vectors, model_id = image_vectors(cat, args.model, cache, not args.no_progress)
        text = None
        if w > 0:
            text, text_id = _text_vectors(cat, cache, s.model_dir)
    report, nb = catalogue_report(
        cat, vectors, args.label, args.colour, group, text, w,
        classify=not args.no_classifier, seed=args.seed,
    )  # fmt: skip
    out = args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent
    labels = cat.column(args.label)
    match = joint_labels(labels, cat.column(args.colour)) if args.colour else labels
    rng = np.random.default_rng(args.seed)
    have = np.flatnonzero(nb[:, 0] >= 0)
    queries = sorted(rng.choice(have, min(args.queries, len(have)), replace=False).tolist())
    grid_path = out.with_suffix(".png")
    neighbour_grid(cat.images, queries, nb, labels, match).save(grid_path)
    report.update(
        catalogue=_rel(cat.path, base),
        model_id=model_id,
        column_map=cat.cmap.describe(),
        text_model_id=text_id if text is not None else None,
        grid=_rel(grid_path, base),
        examples=[
            {
                "id": cat.ids[q],
                "image": _rel(cat.images[q], base),
                "label": str(labels[q]),
                "neighbours": [
                    {
                        "id": cat.ids[i],
                        "image": _rel(cat.images[i], base),
                        "label": str(labels[i]),
                        "match": bool(match[i] == match[q]),
                    }
                    for i in nb[q].tolist()
                    if i >= 0
                ],  # fmt: skip
            }
            for q in queries
        ],
        seconds=round(time.perf_counter() - t0, 1),
    )
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = summarise(report)
    out.with_suffix(".md").write_text(summary)
    print(summary)
    print(f"wrote {out}, {out.with_suffix('.md')}, {grid_path}", file=sys.stderr)
    return 0
