"""``vrec train multimodal``: what the text embedding adds to the image embedding (H&M).

Three measurements over the whole catalogue, for image-only, text-only and fused vectors
(:mod:`encoders.fusion`; text = name + product type + colour + description, see
:func:`encoders.text.item_text`):

* **classify**: the softmax head of :mod:`encoders.classify` (``run_classify``: product_code
  split 80/10/10, rare classes -> "other") on ``product_type_name`` over the image (1280-d), the
  text (384-d) and the concatenated [image, text] (1664-d) embeddings: test top-1 / top-5.
* **neighbours**: for every item, are its nearest neighbours (cosine over fused vectors at text
  weight ``w``; other items of its own product_code left out, since colour variants share a
  title and description) of the same product_type_name? Rate at 1 and precision at 10.
* **eval**: the ``visual`` baseline of :mod:`vrec_tools.eval.baselines` on the dev split (history
  before 2020-09-17, truth 2020-09-17..19) with the catalogue's fused vectors at each ``w``:
  MAP@12 all / warm (``w = 0`` is the image-only baseline). ``--baseline live`` runs the live
  core instead (the hybrid ranker of streams/recommend.py, in-process), its visual signal on the
  fused vectors.

Leakage: ``detail_desc`` and the product type itself are part of the text, so text-only and
fused numbers for product-type classification and neighbours are an upper bound (the label is
in the input); they say what a catalogue with good descriptions gets, not what the image sees.

Text vectors are cached like image vectors (:class:`encoders.cache.EmbeddingCache`), keyed by
the text model id and the sha256 of the text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.fusion import fuse

__all__ = [
    "DEFAULT_WEIGHTS",
    "add_args",
    "catalogue_text_embeddings",
    "catalogue_texts",
    "classify_table",
    "eval_table",
    "neighbour_rates",
    "run_cli",
]

DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
EVAL_BASELINES = ("visual", "live", "visual_per_modality")
EVAL_HEADER = (
    "text weight", "MAP@12 all", "MAP@12 warm", "HR@12 all", "HR@12 warm", "coverage",
    "warm MAP vs first weight [95% CI]",
)  # fmt: skip
_EMBED_CHUNK = 512


def catalogue_texts(items: Any, columns: Sequence[str] | None = None) -> list[str]:
    """The text of every catalogue row: :func:`encoders.text.item_text` (name, product type,
    colour, description), or the given ``columns`` joined the same way."""
    from encoders.text import HM_TEXT_COLUMNS, join_text

    cols = tuple(columns) if columns else HM_TEXT_COLUMNS
    return [join_text([r.get(c) for c in cols]) for r in items.rows]


def catalogue_text_embeddings(
    texts: Sequence[str],
    encoder: Any,
    cache: Any | None = None,
    progress: bool = False,
) -> np.ndarray:
    """(N, dim) unit text vectors in input order; cached by (model id, sha256 of the text).

    Each distinct uncached text is embedded once, in chunks written to ``cache`` as they are
    done (an interrupted run resumes). Empty texts get a zero row.
    """
    keys = [hashlib.sha256(t.encode()).hexdigest() if t else None for t in texts]
    known = cache.get_many(encoder.model_id, {k for k in keys if k}) if cache is not None else {}
    todo: dict[str, str] = {}
    for k, t in zip(keys, texts):
        if k is not None and k not in known:
            todo.setdefault(k, t)
    pending = list(todo.items())
    t0 = time.perf_counter()
    for start in range(0, len(pending), _EMBED_CHUNK):
        chunk = pending[start : start + _EMBED_CHUNK]
        vecs = encoder.embed([t for _, t in chunk])
        new = {k: v for (k, _), v in zip(chunk, vecs)}
        if cache is not None:
            cache.put_many(encoder.model_id, new)
        known.update(new)
        if progress:
            done = start + len(chunk)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"text: {done}/{len(pending)} embedded ({rate:.0f}/s)", file=sys.stderr)
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for i, k in enumerate(keys):
        if k is not None:
            out[i] = known[k]
    return out


def fused_catalogue(image: np.ndarray, text: np.ndarray, w: float) -> np.ndarray:
    """Fused vectors of the catalogue; items without an image stay zero rows (as with
    image-only vectors), so every weight ranks the same candidate set."""
    out = fuse(image, text, w)
    out[np.abs(image).sum(axis=1) == 0] = 0.0
    return out


# ------------------------------------------------------------------ nearest neighbours


def neighbour_rates(
    x: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    k: int = 10,
    chunk: int = 1024,
) -> dict[str, float]:
    """Same-label rate of each row's nearest neighbour and precision@k (cosine; x unit rows).

    The row itself and every row of its own group (product code) are left out; rows that are
    all zero are neither queries nor neighbours.
    """
    x = np.asarray(x, dtype=np.float32)
    labels, groups = np.asarray(labels), np.asarray(groups)
    valid = np.abs(x).sum(axis=1) > 0
    idx = np.flatnonzero(valid)
    xv, lv, gv = x[idx], labels[idx], groups[idx]
    at1 = atk = 0.0
    for start in range(0, len(idx), chunk):
        q = slice(start, min(start + chunk, len(idx)))
        sims = xv[q] @ xv.T
        sims[gv[q][:, None] == gv[None, :]] = -np.inf  # own product code (and itself)
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        same = lv[top] == lv[q][:, None]
        at1 += float(same[:, 0].sum())
        atk += float(same.mean(axis=1).sum())
    n = max(len(idx), 1)
    return {"nn_at1": at1 / n, f"precision_at{k}": atk / n, "n_queries": int(len(idx))}


# ------------------------------------------------------------------ classification


def classify_table(
    inputs: dict[str, np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    cfg: Any,
    min_count: int = 10,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """``run_classify`` (product_code split, no export) on each named input matrix.

    All inputs must have the same rows (drop items without an image from every input first:
    ``run_classify`` drops all-zero rows, which would change the split between inputs).
    """
    from encoders.training.classify import run_classify

    out = {}
    for name, x in inputs.items():
        m = run_classify(
            x, labels, groups, "product_type_name", cfg, min_count=min_count, progress=progress
        )
        m.pop("_model", None)
        m["dim"] = int(x.shape[1])
        out[name] = m
    return out


# ------------------------------------------------------------------ offline eval


def eval_table(
    image: np.ndarray,
    text: np.ndarray,
    weights: Sequence[float],
    data_dir: Path,
    cutoff: str,
    end: str,
    items: Any | None = None,
    baseline: str = "visual",
) -> dict[str, dict[str, Any]]:
    """An offline baseline on the dev split with fused vectors at each text weight.

    ``baseline``: ``"visual"`` (cosine to the user's decayed mean vector) or ``"live"`` (the
    live core, :func:`vrec_tools.eval.livecore.live_lists`, ranking with the fused vectors) or
    ``"visual_per_modality"`` (:func:`visual_per_modality`). Each weight's
    result also has ``delta_map_warm`` against the first weight with a 95% paired bootstrap
    interval over the warm users (:func:`paired_bootstrap`).
    """
    from vrec_tools.eval.baselines import visual
    from vrec_tools.eval.data import dev_split, load_events, load_items
    from vrec_tools.eval.livecore import live_lists, live_settings
    from vrec_tools.eval.metrics import apk, evaluate

    if baseline not in EVAL_BASELINES:
        raise ValueError(f"baseline must be one of {EVAL_BASELINES}, not {baseline!r}")
    items = items if items is not None else load_items(data_dir)
    events = load_events(data_dir, items)
    history, truth, warm = dev_split(events, cutoff, end)
    users = list(truth)
    out: dict[str, dict[str, Any]] = {}
    warm_users = [u for u in truth if u in warm]
    first_ap: np.ndarray | None = None
    for w in weights:
        t0 = time.perf_counter()
        emb = fused_catalogue(image, text, w)
        if baseline == "visual_per_modality":
            preds = visual_per_modality(history, users, image, text, w, cutoff=cutoff)
        elif baseline == "live":
            vectors = dict(zip(items.article_id.tolist(), emb))
            preds = live_lists(
                live_settings(12), users, data_dir=data_dir, cutoff=cutoff, end=end, vectors=vectors
            )
        else:
            preds = visual(history, users, emb, cutoff=cutoff)
        res = evaluate(preds, truth, warm, catalogue_size=len(items))
        ap = np.array([apk(truth[u], preds.get(u, []), 12) for u in warm_users])
        first_ap = ap if first_ap is None else first_ap
        delta, lo, hi = paired_bootstrap(ap, first_ap)
        res.update(delta_map_warm=delta, delta_map_warm_ci95=[lo, hi])
        res["seconds"] = round(time.perf_counter() - t0, 2)
        out[f"{w:g}"] = res
    return out


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``a - b`` (per-user scores) and its 95% bootstrap interval (users resampled)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) == 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def _unit64(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def visual_per_modality(
    history: Any,
    users: Sequence[str],
    image: np.ndarray,
    text: np.ndarray,
    w: float,
    *,
    half_life: float = 30.0,
    cutoff: str | None = None,
    k: int = 12,
) -> dict[str, list[str]]:
    """The ``visual`` baseline with a per-modality user vector (an alternative to fusing the
    mean): score ``(1 - w) cos(u_image, v_image) + w cos(u_text, v_text)`` where ``u`` are the
    *separately normalised* decayed means; popularity fill, candidates = items with an image.

    Same machinery as :func:`vrec_tools.eval.baselines.visual` (its index, top-k and fill helpers),
    so at ``w = 0`` it ranks as that baseline does (up to float32 rounding at near-ties).
    """
    from vrec_tools.eval.baselines import (
        VectorIndex,
        fill_ranking,
        popularity_ranking,
        to_ids,
        topk,
    )

    ix = VectorIndex.build(history, users, cutoff)
    pop = popularity_ranking(history, 7, ix.cutoff_day)
    has_img = np.linalg.norm(image, axis=1) > 0
    lists = []
    for n in range(len(ix.users)):
        items, days = ix.events_of(n)
        items, days = items[has_img[items]], days[has_img[items]]
        if len(items) == 0:
            lists.append(pop[:k].tolist())
            continue
        wt = ix.decay(days, half_life)[:, None]
        u_i = _unit64((wt * image[items].astype(np.float64)).sum(0)).astype(np.float32)
        u_t = _unit64((wt * text[items].astype(np.float64)).sum(0)).astype(np.float32)
        scores = (1.0 - w) * (image @ u_i).astype(np.float64)
        scores += w * (text @ u_t).astype(np.float64)
        scores = np.round(scores, 6)  # as the visual baseline: float noise never decides ties
        scores[~has_img] = -np.inf
        lists.append(fill_ranking(topk(scores, k).tolist(), pop, k))
    return to_ids(ix, lists)


# ------------------------------------------------------------------ CLI


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``vrec train multimodal``."""
    p.add_argument("--items", type=Path, default=None, help="items.csv (default: shared H&M)")
    p.add_argument("--cache", type=Path, default=None, help="embedding cache sqlite file")
    p.add_argument("--model-dir", type=Path, default=None, help="models dir (default: settings)")
    p.add_argument(
        "--weights",
        default=",".join(f"{w:g}" for w in DEFAULT_WEIGHTS),
        help="text weights for neighbours and eval (comma-separated, 0 = image only)",
    )
    p.add_argument(
        "--parts",
        default="classify,neighbours,eval",
        help="what to measure (comma-separated: classify, neighbours, eval)",
    )
    p.add_argument("--epochs", type=int, default=200, help="classifier max epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-count", type=int, default=10)
    p.add_argument("--baseline", choices=EVAL_BASELINES, default="visual", help="eval ranker")
    p.add_argument("--cutoff", default=None, help="dev split cutoff (default: 2020-09-17)")
    p.add_argument("--end", default=None, help="dev split last truth day (default: 2020-09-19)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (text encoder)")
    p.add_argument(
        "--text-columns",
        default="",
        help="items.csv columns of the item text (comma-separated; default: prod_name, "
        "product_type_name, colour_group_name, detail_desc)",
    )
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--no-progress", action="store_true")


def _fmt_rows(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [f"| {line} |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(out)


def run_cli(args: argparse.Namespace) -> int:
    from encoders.cache import EmbeddingCache
    from encoders.registry import ensure_text_model
    from encoders.text import TextEncoder
    from encoders.training.classify import HeadConfig
    from streams.settings import get_settings
    from vrec_tools.eval.data import DEFAULT_HM_DIR, DEV_CUTOFF, DEV_END, load_items

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"classify", "neighbours", "eval"}
    if unknown:
        print(f"unknown --parts {sorted(unknown)}", file=sys.stderr)
        return 2
    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    progress = not args.no_progress
    data = args.items if args.items is not None else DEFAULT_HM_DIR
    model_dir = args.model_dir if args.model_dir is not None else get_settings().model_dir
    t0 = time.perf_counter()
    items = load_items(data)
    from vrec_tools.eval.baselines import catalogue_embeddings

    image = catalogue_embeddings(items, args.cache, progress=progress)
    encoder = TextEncoder(ensure_text_model(model_dir), threads=args.threads)
    with EmbeddingCache(args.cache) as cache:
        columns = [c.strip() for c in args.text_columns.split(",") if c.strip()]
        texts = catalogue_texts(items, columns)
        text = catalogue_text_embeddings(texts, encoder, cache, progress)
    print(
        f"{len(items)} items: image {image.shape}, text {text.shape} ({encoder.model_id}) "
        f"in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    has_image = np.abs(image).sum(axis=1) > 0
    results: dict[str, Any] = {
        "n_items": len(items),
        "n_without_image": int((~has_image).sum()),
        "text_model_id": encoder.model_id,
        "text_columns": columns or "prod_name,product_type_name,colour_group_name,detail_desc",
        "text_example": texts[0],
        "weights": weights,
    }
    labels = items.product_type
    report = []

    if "classify" in parts:
        keep = has_image  # the same rows (and so the same split) for every input
        cfg = HeadConfig(epochs=args.epochs, seed=args.seed)
        inputs = {
            "image": image[keep],
            "text": text[keep],
            "image+text (concat)": np.concatenate([image, text], axis=1)[keep],
        }
        cls = classify_table(
            inputs, labels[keep], items.product_code[keep], cfg, args.min_count, progress
        )
        results["classify"] = cls
        rows = [
            (n, m["dim"], m["n_classes"], m["test_top1"], m["test_top5"], m["best_epoch"])
            for n, m in cls.items()
        ]
        first = next(iter(cls.values()))
        rows.append(("majority class", "-", first["n_classes"], first["majority_top1"],
                     first["majority_top5"], "-"))  # fmt: skip
        report.append(
            "classification of product_type_name (test split by product_code)\n"
            + _fmt_rows(("input", "dim", "classes", "top-1", "top-5", "epoch"), rows)
        )
    if "neighbours" in parts:
        nn = {}
        for w in weights:
            nn[f"{w:g}"] = neighbour_rates(
                fused_catalogue(image, text, w), labels, items.product_code
            )
        results["neighbours"] = nn
        rows = [(w, m["nn_at1"], m["precision_at10"], m["n_queries"]) for w, m in nn.items()]
        report.append(
            "nearest neighbours of the same product_type_name (own product_code left out)\n"
            + _fmt_rows(("text weight", "NN@1", "P@10", "queries"), rows)
        )
    if "eval" in parts:
        cutoff, end = args.cutoff or DEV_CUTOFF, args.end or DEV_END
        ev = eval_table(image, text, weights, items.root, cutoff, end, items, args.baseline)
        results["eval"] = ev
        results["eval_split"] = {"cutoff": cutoff, "end": end, "baseline": args.baseline}
        rows = [
            (w, m["map_all"], m["map_warm"], m["hr_all"], m["hr_warm"], m["coverage"],
             "{:+.4f} [{:+.4f}, {:+.4f}]".format(m["delta_map_warm"], *m["delta_map_warm_ci95"]))
            for w, m in ev.items()
        ]  # fmt: skip
        first = next(iter(ev.values()))
        report.append(
            f"{args.baseline} baseline, dev split {cutoff}..{end} ({first['users']} users, "
            f"{first['warm_users']} warm), fused vectors by text weight\n"
            + _fmt_rows(EVAL_HEADER, rows)
        )
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print("\n\n".join(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
