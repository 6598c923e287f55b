"""`vrec demo`: a local broker, a worker, the sample catalogue and log, then a few users' recs."""

from __future__ import annotations

import collections
import time
from pathlib import Path

from streams.settings import get_settings, isolated_run


def run_demo(items: Path, log: Path, users: int = 3) -> int:
    from vrec_tools.harness import Pipeline, local_broker
    from vrec_tools.replay import read_hm_items, read_log

    settings = isolated_run(get_settings(), "demo")
    if settings.image_root is None:  # the worker reads the catalogue's images, nothing else
        settings = settings.model_copy(update={"image_root": items.resolve().parent})
    with local_broker(settings):
        products = read_hm_items(items)
        _, events = read_log(log)
        titles = {p.item_id: f"{p.title} ({p.category})" for p in products}
        print(f"catalogue: {len(products)} products; log: {len(events)} events", flush=True)
        with Pipeline(settings) as pipe:
            t0 = time.monotonic()
            pipe.index(products)
            t_index = time.monotonic() - t0
            print(
                f"indexed {len(products)} images in {t_index:.1f} s "
                f"({len(products) / t_index:.1f} images/s end to end, incl. worker start)"
            )
            t0 = time.monotonic()
            pipe.replay(events, progress=True)
            t_replay = time.monotonic() - t0
            print(
                f"replayed {len(events)} events in {t_replay:.1f} s "
                f"({len(events) / t_replay:.0f} events/s through the pipeline)"
            )
            recs = pipe.recommendations()
            dead = pipe.dead_letters()
        last = {r.user_id: r for r in recs}
        n_events = collections.Counter(e.user_id for e in events)
        shown = sorted(last, key=lambda u: (-n_events[u], u))[:users]
        history = collections.defaultdict(list)
        for e in events:
            history[e.user_id].append(e)
        for user in shown:
            rec = last[user]
            print(
                f"\nuser {user} ({n_events[user]} events; strategy {rec.strategy}, "
                f"model {rec.model_id})"
            )
            for e in history[user][-4:]:
                print(f"   {e.kind:8s} {e.item_id}  {titles.get(e.item_id, '?')}")
            print("  recommended:")
            for it in rec.items[:6]:
                print(
                    f"   {it.score:6.3f} {it.item_id}  {titles.get(it.item_id, '?')}  [{it.reason}]"
                )
        print(
            f"\n{len(recs)} recommendations published, {len(dead)} dead letters; "
            f"worker log: {pipe.worker.log_path}"
        )
    return 0
