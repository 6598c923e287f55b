"""`vrec bench pipeline`: events/s and event-to-recommendation latency through a live worker.

Starts a worker (and a broker if none answers), indexes the sample catalogue, replays the sample
log ``--repeat`` times (fresh event ids each time), and prints throughput and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from streams.settings import REPO_ROOT, get_settings, isolated_run

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"


def add_args(ap: argparse.ArgumentParser) -> None:
    """``vrec bench pipeline``."""
    ap.add_argument("--items", type=Path, default=SAMPLE / "items.csv")
    ap.add_argument("--log", type=Path, default=SAMPLE / "events.jsonl")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)


def run(args: argparse.Namespace) -> int:
    from vrec_tools.harness import Pipeline, local_broker
    from vrec_tools.replay import read_hm_items, read_log

    settings = isolated_run(get_settings(), "bench")
    if settings.image_root is None:  # the worker reads the catalogue's images, nothing else
        settings = settings.model_copy(update={"image_root": args.items.resolve().parent})
    products = read_hm_items(args.items)
    _, events = read_log(args.log)
    events = [
        e.model_copy(update={"event_id": f"{e.event_id}#{r}"})
        for r in range(args.repeat)
        for e in events
    ]
    with local_broker(settings), Pipeline(settings) as pipe:
        t0 = time.monotonic()
        pipe.index(products)
        t_index = time.monotonic() - t0
        t0 = time.monotonic()
        pipe.replay(events)
        t_replay = time.monotonic() - t0
        recs = pipe.recommendations()
    lat = np.array(
        [r.produced_ts - pipe.sent_at[r.event_id] for r in recs if r.event_id in pipe.sent_at]
    )
    out = {
        "products": len(products),
        "index_s": round(t_index, 2),
        "images_per_s_incl_worker_start": round(len(products) / t_index, 1),
        "events": len(events),
        "replay_s": round(t_replay, 2),
        "events_per_s": round(len(events) / t_replay, 1),
        "latency_ms_p50": round(float(np.percentile(lat, 50)) * 1000, 1),
        "latency_ms_p99": round(float(np.percentile(lat, 99)) * 1000, 1),
        "settings": {"store": settings.store, "table_store": settings.table_store},
    }
    for k, v in out.items():
        print(f"{k:32s} {v}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0
