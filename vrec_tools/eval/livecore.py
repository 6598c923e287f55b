"""The live core offline: the H&M log and catalogue through :mod:`streams.offline`.

The one ranker (streams/recommend.py) serves the live worker, the web API and evaluation: this
module is how evaluation, benches and experiments get its lists without Kafka -- the history of
a day split, the products with their catalogue prices, the catalogue mirror from the embedding
cache (or from given vectors), then :func:`streams.offline.replay_history`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from streams.catalogue import Catalogue
from streams.events import ProductUpload, to_epoch
from streams.offline import replay_history
from streams.settings import Settings, get_settings
from vrec_tools.eval.data import DEFAULT_HM_DIR, catalogue_prices, load_events
from vrec_tools.replay import read_hm_events, read_hm_items

Predictions = dict[str, list[str]]


def split_log(path: Path, cutoff: str, end: str):
    """H&M events.csv split by day: (history events, truth events from cutoff to end)."""
    events = read_hm_events(path)
    c = _day_ts(cutoff)
    e_end = _day_ts(end) + 86_400
    return [e for e in events if e.ts < c], [e for e in events if c <= e.ts < e_end]


def split_events(path: Path, cutoff: str, end: str):
    """H&M events.csv split by day: (history events, truth dict)."""
    history, later = split_log(path, cutoff, end)
    truth: dict[str, set[str]] = defaultdict(set)
    for e in later:
        if e.kind == "purchase":
            truth[e.user_id].add(e.item_id)
    return history, dict(truth)


def _day_ts(day: str) -> float:
    return to_epoch(day)


def history_prices(events: Path, cutoff: str) -> dict[str, float]:
    """article_id -> median price paid before ``cutoff`` (the products' catalogue price; H&M's
    articles table has none). The same values as
    :func:`vrec_tools.eval.data.catalogue_prices`."""

    log = load_events(events)
    prices = catalogue_prices(log, cutoff)
    return {str(a): float(p) for a, p in zip(log.items.tolist(), prices.tolist()) if p > 0}


def load_products(
    items: Path, images: Path | None = None, prices: dict[str, float] | None = None
) -> list[ProductUpload]:
    """The H&M articles as products (their catalogue ``price`` from ``prices``; images
    under ``images`` instead of beside ``items`` when given)."""
    products = read_hm_items(items)
    if prices:
        products = [
            p.model_copy(update={"price": prices[p.item_id]}) if p.item_id in prices else p
            for p in products
        ]
    if images is not None:
        root = Path(items).resolve().parent
        products = [
            p.model_copy(update={"image_path": str(images / Path(p.image_path).relative_to(root))})
            for p in products
        ]
    return products


def offline_predictions(settings: Settings, products, history):
    """The users agent's logic in-process over the history, then a clock mark closing its last
    day (as the live eval does): (last list per user, trending list)."""
    return replay_history(settings, catalogue_of(settings, products), history)


def catalogue_of(settings: Settings, products, vectors=None):
    """The products as the worker's catalogue mirror: their image vectors (through the encoder
    and the embedding cache unless ``vectors`` are given) and payloads."""
    if vectors is None:
        from encoders import ImageEncoder
        from encoders.cache import EmbeddingCache, embed_catalogue
        from encoders.registry import ensure_model

        encoder = ImageEncoder(ensure_model(settings.model_dir), device="cpu")
        with EmbeddingCache(settings.embedding_cache) as c:
            vectors = embed_catalogue(encoder, [p.image_path for p in products], c, errors="zero")
    cat = Catalogue()
    for p, vec in zip(products, vectors):
        if np.any(vec):
            cat.put(p.item_id, vec, p.payload())
    return cat


def live_lists(
    settings: Settings,
    users: Iterable[str],
    *,
    data_dir: Path = DEFAULT_HM_DIR,
    cutoff: str,
    end: str,
    vectors: Mapping[str, np.ndarray] | None = None,
) -> Predictions:
    """The live core's last list for each of ``users`` after the history before ``cutoff``
    (the trending list for users it never published to), ``settings.top_k`` long.

    ``vectors``: item id -> image vector to rank with instead of the encoder's (e.g. fused
    image + text vectors); items without one are left out of the catalogue mirror.
    """
    history, _ = split_log(data_dir / "events.csv", cutoff, end)
    products = load_products(data_dir / "items.csv", None, history_prices(data_dir, cutoff))
    if vectors is not None:
        zero = np.zeros(0, dtype=np.float32)
        cat = catalogue_of(settings, products, [vectors.get(p.item_id, zero) for p in products])
    else:
        cat = catalogue_of(settings, products)
    lists, trending = replay_history(settings, cat, history)
    return {u: lists.get(u, trending) for u in users}


def live_settings(k: int, cache: Path | None = None) -> Settings:
    """The live defaults (VREC_* read once) with lists ``k`` long and the given embedding cache."""
    update: dict[str, object] = {"top_k": k}
    if cache is not None:
        update["embedding_cache"] = str(cache)
    return get_settings().model_copy(update=update)
