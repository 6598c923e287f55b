"""`vrec eval`: replay a history through the live pipeline and score what it published.

    vrec eval --items ITEMS.csv --history EVENTS.csv --truth EVENTS.csv --k 12 --out report.json
    vrec eval --items ITEMS.csv --events events.csv --cutoff 2020-09-17 --end 2020-09-19 ...
    vrec eval ... --baseline popularity|repurchase|itemcf|visual|hybrid   (offline, same scoring)
    vrec eval catalogue --items ITEMS.csv --label COLUMN ...   (no interactions; see .catalogue)

1. indexes the catalogue through the encoder path (embedding cache keyed by model id + image
   hash, so a rerun does not re-embed), 2. replays the history through a running worker (real
   broker) and closes its last day with a clock mark (the worker re-ranks that day's users
   with the day's final popularity), 3. takes, for every truth customer, the last
   recommendation vrec published for them (customers with no history: the last trending
   list vrec published), 4. scores them against the articles each customer bought in the
   truth period. Ranking settings come from VREC_*
   variables or ``--set name=value``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from streams.experiment import from_settings
from streams.settings import REPO_ROOT, Settings, get_settings, isolated_run
from vrec_tools.eval.livecore import (
    history_prices,
    load_products,
    offline_predictions,
    split_events,
    split_log,
)
from vrec_tools.eval.metrics import by_variant

METRICS = ("map", "hr", "recall", "ndcg")


def read_truth(path: Path) -> dict[str, set[str]]:
    """customer -> articles bought (H&M CSV or vrec JSONL purchases)."""
    from vrec_tools.replay import read_log

    _, events = read_log(path)
    truth: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.kind == "purchase":
            truth[e.user_id].add(e.item_id)
    return dict(truth)


def _run_settings(args, **overrides) -> Settings:
    """A run's settings: VREC_*, then --set, --k, the embedding cache (the repository's by
    default) and the catalogue's folder as the image root when none is set."""
    base = _apply_sets(get_settings(), args.set)
    cache = base.embedding_cache or str(REPO_ROOT / ".cache" / "embeddings.sqlite")
    settings = isolated_run(base, "eval", top_k=args.k, embedding_cache=cache, **overrides)
    if settings.image_root is None:  # the worker reads the catalogue's images only
        images = args.images or Path(args.items).parent
        settings = settings.model_copy(update={"image_root": images.resolve()})
    return settings


def _apply_sets(settings: Settings, pairs: list[str]) -> Settings:
    update = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in Settings.model_fields:
            raise SystemExit(f"--set: unknown setting {name!r}")
        update[name] = json.loads(value) if value[:1] in "[{" else value
    return Settings.model_validate({**settings.model_dump(exclude={"topics"}), **update})


def live_predictions(settings: Settings, products, history, progress: bool = True):
    """Run the pipeline; return (last list per user, trending list, latencies s, timings)."""
    from streams.events import Recommendation
    from streams.experiment import from_settings
    from vrec_tools.harness import Pipeline, local_broker

    experiment = from_settings(settings)
    own = experiment.assign if experiment is not None else None

    timings = {}
    with local_broker(settings), Pipeline(settings) as pipe:
        t0 = time.monotonic()
        pipe.index(products, timeout=3600)
        timings["index_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        pipe.replay(history, timeout=7200, progress=progress)
        timings["replay_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        if history and settings.day_close_refresh:  # the last day is over: final lists
            day = settings.trending_bucket_s
            pipe.close_days((max(e.ts for e in history) // day + 1) * day, timeout=3600)
            timings["day_close_s"] = time.monotonic() - t0
            t0 = time.monotonic()
        last: dict[str, Recommendation] = {}
        latencies = []
        for r in pipe.recommendation_records(idle=3.0):
            rec = Recommendation.from_bytes(r.value)
            if own is None or (rec.variant or "") == own(rec.user_id):  # shadow: own list
                last[rec.user_id] = rec
            sent = pipe.sent_at.get(rec.event_id or "")
            if sent is not None:
                latencies.append(rec.produced_ts - sent)
        newest = max(e.ts for e in history) if history else None

        trending: list = []

        def settled() -> bool:
            recs = pipe.read("trending", idle=0.5, timeout=10)
            trending[:] = [Recommendation.from_bytes(r.value) for r in recs[-1:]]
            return bool(trending) and (newest is None or trending[0].event_ts == newest)

        pipe.wait_until("the final trending list", settled, timeout=120)
        timings["collect_s"] = time.monotonic() - t0
        model_id = trending[0].model_id
    lists = {u: [i.item_id for i in r.items] for u, r in last.items()}
    return lists, [i.item_id for i in trending[0].items], np.array(latencies), timings, model_id


def summarise(metrics: dict, extra: dict) -> str:
    rows = [
        "| metric | all | warm |",
        "|---|---|---|",
        *(
            f"| {m}@{extra['k']} | {metrics[f'{m}_all']:.4f} | {metrics[f'{m}_warm']:.4f} |"
            for m in METRICS
        ),
    ]
    lines = [
        f"# vrec eval: {extra['method']}",
        "",
        *rows,
        "",
        f"- customers: {metrics['users']} ({metrics['warm_users']} warm); "
        f"catalogue coverage {metrics.get('coverage', 0):.4f}",
    ]
    for variant, m in extra.get("variants", {}).items():
        (lo, hi), (wlo, whi) = m["map_all_ci"], m["map_warm_ci"]
        lines.append(
            f"- variant {variant}: {m['users']} customers, MAP@{extra['k']} all "
            f"{m['map_all']:.4f} [{lo:.4f}, {hi:.4f}], warm ({m['warm_users']}) "
            f"{m['map_warm']:.4f} [{wlo:.4f}, {whi:.4f}] (95% bootstrap over customers)"
        )
    if "latency_ms_p50" in extra:
        lines.append(
            f"- event-to-recommendation latency p50 {extra['latency_ms_p50']:.0f} ms, "
            f"p99 {extra['latency_ms_p99']:.0f} ms; {extra.get('events_per_s', 0):.0f} events/s"
        )
    return "\n".join(lines) + "\n"


def plot(metrics: dict, path: Path, title: str) -> None:
    """A small bar chart (Pillow): each metric for all and warm customers."""
    from PIL import Image, ImageDraw

    w, h, pad = 640, 360, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 10), title, fill="black")
    top = max(max(metrics[f"{m}_{g}"] for m in METRICS for g in ("all", "warm")), 1e-9)
    slot = (w - 2 * pad) / len(METRICS)
    for n, m in enumerate(METRICS):
        for j, (g, colour) in enumerate((("all", "#4c78a8"), ("warm", "#f58518"))):
            v = metrics[f"{m}_{g}"]
            x0 = pad + n * slot + 10 + j * (slot / 2 - 10)
            y1 = h - pad
            y0 = y1 - (h - 2 * pad - 20) * v / top
            d.rectangle([x0, y0, x0 + slot / 2 - 20, y1], fill=colour)
            d.text((x0, y0 - 12), f"{v:.3f}", fill="black")
        d.text((pad + n * slot + 10, h - pad + 5), f"{m}@12", fill="black")
    d.text((w - 150, 10), "blue: all  orange: warm", fill="black")
    img.save(path)


def add_args(ap: argparse.ArgumentParser) -> None:
    """``vrec eval``'s arguments."""
    ap.add_argument("--items", type=Path, required=True)
    ap.add_argument("--images", type=Path, help="folder image_path is relative to")
    ap.add_argument("--history", type=Path)
    ap.add_argument("--truth", type=Path)
    ap.add_argument("--events", type=Path, help="one H&M events.csv, split at --cutoff")
    ap.add_argument("--cutoff", default="2020-09-17")
    ap.add_argument("--end", default="2020-09-19")
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("report.json"))
    ap.add_argument("--baseline", help="offline baseline instead of the live pipeline")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--protocol",
        choices=("batch", "prequential"),
        default="batch",
        help="batch: the lists at the cut-off against the truth days; prequential: each truth "
        "event against the list its user had just before it (vrec_tools/eval/prequential.py)",
    )


def main(argv: list[str] | None = None) -> int:
    """``vrec eval`` from ``argv`` (tests call this): :func:`add_args`, :func:`run`."""
    ap = argparse.ArgumentParser(prog="vrec eval", description=__doc__.split("\n\n")[0])
    add_args(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """``vrec eval``: score the live pipeline (or an offline baseline) on a history."""
    from vrec_tools.eval.metrics import evaluate

    if args.protocol == "prequential":
        return _prequential(args)

    if args.events:
        history, truth = split_events(args.events, args.cutoff, args.end)
    elif args.history and args.truth:
        from vrec_tools.replay import read_log

        history = read_log(args.history)[1]
        truth = read_truth(args.truth)
    else:
        raise SystemExit("give --events, or --history and --truth")
    warm = {e.user_id for e in history} & set(truth)
    # catalogue prices (the hybrid ranker's price weighting) from the history's purchases
    prices = history_prices(args.events, args.cutoff) if args.events else None
    products = load_products(args.items, args.images, prices)
    extra: dict = {"k": args.k, "customers": len(truth), "history_events": len(history)}

    if args.baseline == "live":  # the live core in-process (streams/offline.py), no Kafka
        settings = _run_settings(args)
        lists, trending = offline_predictions(settings, products, history)
        predictions = {u: lists.get(u, trending) for u in truth}
        extra.update(method="offline:live-core", published_users=len(lists))
        metrics = evaluate(predictions, truth, warm, k=args.k, catalogue_size=len(products))
        return _write(args, metrics, extra, predictions)
    if args.baseline:  # offline, on the same split of the same H&M folder
        from vrec_tools.eval.baselines import run_baselines

        if not args.events:
            raise SystemExit("--baseline works on an H&M folder: give --events")
        metrics = run_baselines(
            [args.baseline], data_dir=args.events.parent, cutoff=args.cutoff, end=args.end
        )[args.baseline]
        extra["method"] = f"baseline:{args.baseline}"
        return _write(args, metrics, extra, predictions=None)
    else:
        settings = _run_settings(args)
        t0 = time.monotonic()
        lists, trending, lat, timings, model_id = live_predictions(
            settings, products, history, progress=not args.no_progress
        )
        predictions = {u: lists.get(u, trending) for u in truth}
        extra.update(
            method=f"live:{settings.ranker}",
            topic_prefix=settings.topics.prefix,
            model_id=model_id,
            settings={
                k: v
                for k, v in settings.model_dump(mode="json").items()
                if k.startswith(
                    ("w_", "ranker", "exclude", "half_life", "trending", "weight_")
                    + ("rep_price", "sibling_", "cf_", "pop_candidates", "day_close")
                )
            },
            timings_s={k: round(v, 1) for k, v in timings.items()},
            total_s=round(time.monotonic() - t0, 1),
            events_per_s=len(history) / max(timings["replay_s"], 1e-9),
            latency_ms_p50=float(np.percentile(lat, 50) * 1000) if len(lat) else None,
            latency_ms_p99=float(np.percentile(lat, 99) * 1000) if len(lat) else None,
            published_users=len(lists),
        )
    metrics = evaluate(predictions, truth, warm, k=args.k, catalogue_size=len(products))
    experiment = from_settings(settings)
    if experiment is not None:  # each customer's list is their own variant's
        extra["variants"] = by_variant(predictions, truth, warm, experiment.assign, args.k)
    return _write(args, metrics, extra, predictions)


def _prequential(args) -> int:
    """Replay history and truth through the live pipeline; score each truth event."""
    from streams.experiment import from_settings
    from vrec_tools.eval import prequential
    from vrec_tools.replay import read_log

    if args.events:
        history, truth = split_log(args.events, args.cutoff, args.end)
    elif args.history and args.truth:
        history, truth = read_log(args.history)[1], read_log(args.truth)[1]
    else:
        raise SystemExit("give --events, or --history and --truth")
    prices = history_prices(args.events, args.cutoff) if args.events else None
    products = load_products(args.items, args.images, prices)
    settings = _run_settings(args, variants_shadow=True)
    experiment = from_settings(settings)
    t0 = time.monotonic()
    recs, user_events, vectors, timings = prequential.replay_prequential(
        settings, products, history, truth, progress=not args.no_progress
    )
    report = prequential.prequential_report(
        recs, user_events, vectors, truth, experiment.names if experiment else ["-"], args.k
    )
    report.update(timings_s=timings, total_s=round(time.monotonic() - t0, 1))
    print(prequential.write(report, args.out, args.k))
    return 0


def _write(args, metrics: dict, extra: dict, predictions: dict | None) -> int:
    report = {"metrics": metrics, **extra}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    summary = summarise(metrics, extra)
    args.out.with_suffix(".md").write_text(summary)
    plot(metrics, args.out.with_suffix(".png"), extra["method"])
    if predictions is not None:  # the lists themselves, so scores can be recomputed
        with open(args.out.with_suffix(".predictions.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["customer_id", "prediction"])
            for u in sorted(predictions):
                w.writerow([u, " ".join(predictions[u])])
    print(summary)
    return 0
