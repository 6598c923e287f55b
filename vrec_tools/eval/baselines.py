"""Offline baselines on an event history (numpy; no Kafka, no vector store).

Every baseline takes the training ``history`` (:class:`~vrec_tools.eval.data.Events`, all before
the cutoff) and the customers to recommend for, and returns ``{customer_id: [article_id] * k}``
for *every* requested customer: customers without (usable) history get the popularity list, and
short personal lists are filled with popular items they do not already have.

Signals (item codes are rows of ``history.items``, i.e. catalogue rows; ``age`` of an event is
``cutoff_day - t_dat`` in days, so an event on the day before the cutoff has age 1):

* popularity ``pop_j``: number of purchases of ``j`` with ``age <= days``; ties broken by the
  later last purchase, then catalogue order. Variants: count each (customer, item, channel)
  once (``unique_customers``) and weight purchases by sales channel (``channel_weights``).
* repurchase ``rep_j``: ``sum over the user's purchases of j of 2 ** (-age / half_life)``.
* co-purchase ``cf_j``: ``sum over seeds i of w_i * co(i, j)`` where ``co(i, j)`` counts the
  (customer, day) baskets that contain both ``i`` and ``j`` (``i != j``, each basket once), or
  with ``window_days > 0`` the customers' purchase pairs at most that many days apart; seeds are
  the user's distinct purchased items with ``w_i = 2 ** (-age_i / half_life)`` (last purchase).
* visual ``cos_j``: cosine of ``j``'s embedding to the user's decayed mean vector
  ``sum_e 2 ** (-age_e / half_life) * v_e / sum_e 2 ** (-age_e / half_life)``.
* sibling ``sib_j``: ``sum over the user's purchases i with product_code(i) == product_code(j)``,
  ``i != j``, of ``2 ** (-age_i / half_life)`` (other colours/sizes of bought products).
* price weighting (``price_exponent`` a > 0, with catalogue prices ``p``, see
  :func:`catalogue_prices`): each purchase of ``i`` counts ``(p_i / max p over the user's
  purchases) ** a`` times its decay in ``rep`` and ``sib`` (items without a price: factor 1).
* popular siblings (``sib_pop`` b > 0): ``sib_j *= 1 + b * log1p(pop_j) / log1p(max pop)``.

The hybrid ranker itself is not re-implemented here: the ``live*`` baselines run the live core
(streams/recommend.py, the one ranker) in-process over the same history
(:func:`vrec_tools.eval.livecore.live_lists`), with the ablations of :data:`LIVE_ABLATIONS`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import (
    DEFAULT_HM_DIR,
    DEV_CUTOFF,
    DEV_END,
    Events,
    Items,
    cutoff_day_number,
    dev_split,
)
from .metrics import evaluate

__all__ = [
    "BASELINES",
    "add_args",
    "catalogue_embeddings",
    "co_counts",
    "itemcf",
    "popularity",
    "popularity_ranking",
    "repurchase",
    "run",
    "run_baselines",
    "visual",
]

Predictions = dict[str, list[str]]


# ------------------------------------------------------------------------- shared machinery


@dataclass
class VectorIndex:
    """The history grouped by user, and the target users' codes into it."""

    history: Events
    users: list[str]
    cutoff_day: int
    code: np.ndarray  # per target user: user code in history (-1: no history)
    ptr: np.ndarray  # CSR over the history sorted by (user, day, src_row)
    item: np.ndarray
    day: np.ndarray

    @classmethod
    def build(cls, history: Events, users: Iterable[str], cutoff: str | int | None) -> VectorIndex:
        users = list(users)
        cutoff_day = cutoff_day_number(history, cutoff)
        order = np.lexsort((history.src_row, history.day, history.user))
        user_sorted = history.user[order]
        ptr = np.searchsorted(user_sorted, np.arange(len(history.users) + 1)).astype(np.int64)
        index = history.user_index()
        code = np.array([index.get(u, -1) for u in users], dtype=np.int64)
        return cls(history, users, cutoff_day, code, ptr, history.item[order], history.day[order])

    @property
    def n_items(self) -> int:
        return len(self.history.items)

    def events_of(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, days) of target user ``n`` in time order (empty arrays without history)."""
        c = self.code[n]
        if c < 0:
            return self.item[:0], self.day[:0]
        s, e = self.ptr[c], self.ptr[c + 1]
        return self.item[s:e], self.day[s:e]

    def decay(self, days: np.ndarray, half_life: float) -> np.ndarray:
        return np.exp2(-(self.cutoff_day - days.astype(np.float64)) / half_life)


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Codes of the ``k`` best finite scores > -inf: score desc, then code asc."""
    valid = np.flatnonzero(scores > -np.inf)
    if len(valid) > k:
        kth = np.partition(scores[valid], len(valid) - k)[len(valid) - k]
        valid = valid[scores[valid] >= kth]
    return valid[np.lexsort((valid, -scores[valid]))][:k]


def fill_ranking(primary: Sequence[int], filler: np.ndarray, k: int) -> list[int]:
    out = list(dict.fromkeys(int(i) for i in primary))[:k]
    have = set(out)
    for i in filler.tolist():
        if len(out) >= k:
            break
        if i not in have:
            out.append(i)
            have.add(i)
    return out


def to_ids(ix: VectorIndex, lists: Sequence[Sequence[int]]) -> Predictions:
    items = ix.history.items
    return {u: [str(items[i]) for i in lst] for u, lst in zip(ix.users, lists)}


def popularity_counts(
    history: Events,
    days: float,
    cutoff: str | int | None = None,
    *,
    unique_customers: bool = False,
    channel_weights: Mapping[int, float] | None = None,
) -> np.ndarray:
    """``pop_j`` over the purchases with age ``1 .. days`` (float64, one per item code).

    Default: the number of such purchases. ``unique_customers``: each (customer, item,
    channel) counts once in the window. ``channel_weights`` ({sales_channel_id: weight},
    missing channels weigh 1): each counted purchase adds its channel's weight.
    """
    c = cutoff_day_number(history, cutoff)
    mask = (history.day < c) & (history.day >= c - days)
    item = history.item[mask].astype(np.int64)
    channel = history.channel[mask].astype(np.int64)
    if unique_customers:
        n_items, n_ch = len(history.items), int(channel.max(initial=0)) + 1
        key = (history.user[mask].astype(np.int64) * n_ch + channel) * n_items + item
        key = np.unique(key)
        item, channel = key % n_items, (key // n_items) % n_ch
    weights = None
    if channel_weights:
        table = np.ones(int(max(channel.max(initial=0), *channel_weights)) + 1)
        for ch, wt in channel_weights.items():
            table[int(ch)] = float(wt)
        weights = table[channel]
    return np.bincount(item, weights=weights, minlength=len(history.items)).astype(np.float64)


def popularity_ranking(
    history: Events,
    days: float = 7,
    cutoff: str | int | None = None,
    n: int = 1000,
    *,
    unique_customers: bool = False,
    channel_weights: Mapping[int, float] | None = None,
) -> np.ndarray:
    """Item codes of the ``n`` most popular items (:func:`popularity_counts`) of the window.

    Ties: later last purchase (before the cutoff) first, then catalogue order. Items never
    bought in the window are not listed.
    """
    c = cutoff_day_number(history, cutoff)
    counts = popularity_counts(
        history, days, c, unique_customers=unique_customers, channel_weights=channel_weights
    )
    before = history.day < c
    last = np.full(len(history.items), -1, dtype=np.int64)
    np.maximum.at(last, history.item[before], history.day[before].astype(np.int64))
    codes = np.flatnonzero(counts > 0)
    order = np.lexsort((codes, -last[codes], -counts[codes]))
    return codes[order][:n]


# ------------------------------------------------------------------------------ baselines


def popularity(
    history: Events,
    users: Iterable[str],
    days: float = 7,
    *,
    unique_customers: bool = False,
    channel_weights: Mapping[int, float] | None = None,
    cutoff: str | int | None = None,
    k: int = 12,
) -> Predictions:
    """The same top-``k`` most popular items of the last ``days`` days for everybody."""
    ranked = popularity_ranking(
        history, days, cutoff, k, unique_customers=unique_customers, channel_weights=channel_weights
    )
    top = [str(history.items[i]) for i in ranked]
    return {u: list(top) for u in users}


def repurchase(
    history: Events,
    users: Iterable[str],
    *,
    order: str = "recent",
    max_age_days: float | None = None,
    pop_days: float = 7,
    cutoff: str | int | None = None,
    k: int = 12,
) -> Predictions:
    """The user's own purchases, then popularity fill.

    ``order="recent"``: last purchase day desc, then purchase count desc, then later event
    first; ``order="frequent"``: count desc, then last day desc. ``max_age_days`` drops
    purchases older than that.
    """
    if order not in ("recent", "frequent"):
        raise ValueError("order must be 'recent' or 'frequent'")
    ix = VectorIndex.build(history, users, cutoff)
    pop = popularity_ranking(history, pop_days, ix.cutoff_day)
    lists = []
    for n in range(len(ix.users)):
        items, days = ix.events_of(n)
        if max_age_days is not None:
            keep = ix.cutoff_day - days <= max_age_days
            items, days = items[keep], days[keep]
        lists.append(fill_ranking(_own_ranked(items, days, order), pop, k))
    return to_ids(ix, lists)


def _own_ranked(items: np.ndarray, days: np.ndarray, order: str = "recent") -> list[int]:
    if len(items) == 0:
        return []
    uniq, inv, cnt = np.unique(items, return_inverse=True, return_counts=True)
    last = np.full(len(uniq), -1, dtype=np.int64)
    np.maximum.at(last, inv, days.astype(np.int64))
    pos = np.full(len(uniq), -1, dtype=np.int64)  # position of the latest event
    np.maximum.at(pos, inv, np.arange(len(items)))
    keys = (-pos, -cnt, -last) if order == "recent" else (-pos, -last, -cnt)
    return uniq[np.lexsort(keys)].tolist()


@dataclass(frozen=True)
class CoCounts:
    """Sparse symmetric co-purchase counts in CSR form: row ``i`` -> (``cols``, ``vals``)."""

    ptr: np.ndarray
    cols: np.ndarray
    vals: np.ndarray

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.ptr[i], self.ptr[i + 1]
        return self.cols[s:e], self.vals[s:e]

    def get(self, i: int, j: int) -> float:
        cols, vals = self.row(i)
        hit = np.flatnonzero(cols == j)
        return float(vals[hit[0]]) if len(hit) else 0.0


def co_counts(history: Events, window_days: int = 0, max_basket: int = 200) -> CoCounts:
    """Item-item co-purchase counts.

    ``window_days=0``: ``co(i, j)`` = number of (customer, day) baskets holding both ``i`` and
    ``j`` (each basket counts a pair once, repeats of an item in a basket do not add). With
    ``window_days = w > 0``: number of customers' distinct (event a, event b) pairs of different
    items whose days differ by at most ``w``, each (customer, i, j) pair counted once. Baskets
    (or customer histories) larger than ``max_basket`` distinct items are skipped.
    """
    n_items = len(history.items)
    if window_days == 0:
        key = history.user.astype(np.int64) * (1 << 20) + history.day.astype(np.int64)
    else:
        key = history.user.astype(np.int64)
    order = np.lexsort((history.day, key))
    key_s, item_s, day_s = key[order], history.item[order], history.day[order]
    bounds = np.flatnonzero(np.diff(key_s)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(key_s)]))
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        if e - s < 2:
            continue
        it = item_s[s:e]
        if window_days == 0:
            u = np.unique(it)
            if len(u) < 2 or len(u) > max_basket:
                continue
            a, b = np.meshgrid(u, u, indexing="ij")
            keep = a != b
            rows.append(a[keep])
            cols.append(b[keep])
        else:
            if len(np.unique(it)) > max_basket:
                continue
            d = day_s[s:e]
            a_idx, b_idx = np.meshgrid(np.arange(e - s), np.arange(e - s), indexing="ij")
            keep = (np.abs(d[a_idx] - d[b_idx]) <= window_days) & (it[a_idx] != it[b_idx])
            pair = np.unique(it[a_idx[keep]].astype(np.int64) * n_items + it[b_idx[keep]])
            rows.append((pair // n_items).astype(np.int32))
            cols.append((pair % n_items).astype(np.int32))
    if rows:
        r = np.concatenate(rows).astype(np.int64)
        c = np.concatenate(cols).astype(np.int64)
        pair, vals = np.unique(r * n_items + c, return_counts=True)
        r, c = pair // n_items, pair % n_items
    else:
        r = c = np.zeros(0, dtype=np.int64)
        vals = np.zeros(0, dtype=np.int64)
    ptr = np.searchsorted(r, np.arange(n_items + 1)).astype(np.int64)
    return CoCounts(ptr, c.astype(np.int32), vals.astype(np.float64))


def _seed_weights(
    ix: VectorIndex, items: np.ndarray, days: np.ndarray, half_life: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct purchased items and ``2 ** (-age / half_life)`` of their last purchase."""
    uniq, inv = np.unique(items, return_inverse=True)
    last = np.full(len(uniq), -1, dtype=np.int64)
    np.maximum.at(last, inv, days.astype(np.int64))
    return uniq, ix.decay(last, half_life)


def _cf_scores(
    ix: VectorIndex, co: CoCounts, seeds: np.ndarray, w: np.ndarray, max_seeds: int
) -> np.ndarray:
    scores = np.zeros(ix.n_items, dtype=np.float64)
    if len(seeds) > max_seeds:
        keep = np.argsort(-w, kind="stable")[:max_seeds]
        seeds, w = seeds[keep], w[keep]
    for i, wi in zip(seeds.tolist(), w.tolist()):
        cols, vals = co.row(i)
        scores[cols] += wi * vals
    return scores


def itemcf(
    history: Events,
    users: Iterable[str],
    *,
    window_days: int = 0,
    half_life: float = 30.0,
    max_seeds: int = 50,
    include_own: bool = False,
    pop_days: float = 7,
    cutoff: str | int | None = None,
    k: int = 12,
    co: CoCounts | None = None,
) -> Predictions:
    """Items co-purchased with the user's purchases (``cf_j`` above), then popularity fill.

    Only items with ``cf_j > 0`` are recommended from the co-counts; the user's own purchases
    are left out unless ``include_own``. ``max_seeds`` keeps the most recent seeds.
    """
    ix = VectorIndex.build(history, users, cutoff)
    pop = popularity_ranking(history, pop_days, ix.cutoff_day)
    co = co if co is not None else co_counts(history, window_days)
    lists = []
    for n in range(len(ix.users)):
        items, days = ix.events_of(n)
        if len(items) == 0:
            lists.append(pop[:k].tolist())
            continue
        seeds, w = _seed_weights(ix, items, days, half_life)
        scores = _cf_scores(ix, co, seeds, w, max_seeds)
        if not include_own:
            scores[seeds] = 0.0
        scores[scores <= 0] = -np.inf
        lists.append(fill_ranking(topk(scores, k).tolist(), pop, k))
    return to_ids(ix, lists)


def _user_vector(emb: np.ndarray, items: np.ndarray, w: np.ndarray) -> np.ndarray | None:
    vec = (w[:, None] * emb[items].astype(np.float64)).sum(axis=0) / max(w.sum(), 1e-300)
    norm = np.linalg.norm(vec)
    return vec / norm if norm > 0 else None


def _iter_cosines(
    ix: VectorIndex, emb: np.ndarray, half_life: float, chunk: int = 256
) -> Iterator[np.ndarray | None]:
    """Per target user in order: cosine of every item to the user's vector (or ``None``).

    User vectors are built for ``chunk`` users at a time and scored with one matrix product;
    cosines are rounded to 6 decimals so that equal images tie exactly (then code order).
    """
    has_vec = np.linalg.norm(emb, axis=1) > 0
    n_users = len(ix.users)
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        vecs: dict[int, np.ndarray] = {}
        for n in range(start, stop):
            items, days = ix.events_of(n)
            keep = has_vec[items]
            if keep.any():
                vec = _user_vector(emb, items[keep], ix.decay(days[keep], half_life))
                if vec is not None:
                    vecs[n] = vec
        rows = {n: r for r, n in enumerate(vecs)}
        sims = np.stack(list(vecs.values())).astype(np.float32) @ emb.T if vecs else None
        for n in range(start, stop):
            r = rows.get(n)
            # rounded: float32 GEMM rounding must not decide ties (e.g. byte-identical images)
            yield None if r is None or sims is None else np.round(sims[r].astype(np.float64), 6)


def visual(
    history: Events,
    users: Iterable[str],
    embeddings: np.ndarray,
    *,
    half_life: float = 30.0,
    exclude_purchased: bool = False,
    candidate_days: float | None = None,
    pop_weight: float = 0.0,
    pop_days: float = 7,
    cutoff: str | int | None = None,
    k: int = 12,
) -> Predictions:
    """Top-``k`` cosine to the user's decayed mean vector (``cos_j``), popularity fill.

    ``embeddings[i]`` is the (unit) vector of item code ``i`` (a zero row: no image).
    ``candidate_days``: only items bought in that many days before the cutoff are candidates
    (``None``: the whole catalogue). ``exclude_purchased`` drops the user's own purchases.
    ``pop_weight`` > 0 ranks by ``cos_j + pop_weight * log1p(pop_j) / log1p(max pop)`` instead.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.shape[0] != len(history.items):
        raise ValueError(f"embeddings has {emb.shape[0]} rows for {len(history.items)} items")
    ix = VectorIndex.build(history, users, cutoff)
    pop = popularity_ranking(history, pop_days, ix.cutoff_day)
    has_vec = np.linalg.norm(emb, axis=1) > 0
    cand = has_vec.copy()
    if candidate_days is not None:
        cand &= popularity_counts(history, candidate_days, ix.cutoff_day) > 0
    pop_score = None
    if pop_weight:
        counts = popularity_counts(history, pop_days, ix.cutoff_day)
        pop_score = pop_weight * np.log1p(counts) / max(np.log1p(counts.max()), 1e-12)
    lists = []
    for n, scores in enumerate(_iter_cosines(ix, emb, half_life)):
        if scores is None:
            lists.append(pop[:k].tolist())
            continue
        if pop_score is not None:
            scores += pop_score
        items, _ = ix.events_of(n)
        scores[~cand] = -np.inf
        if exclude_purchased:
            scores[items] = -np.inf
        lists.append(fill_ranking(topk(scores, k).tolist(), pop, k))
    return to_ids(ix, lists)


# ---------------------------------------------------------------------------------- runner


def catalogue_embeddings(
    items: Items, cache_path: Path | None = None, progress: bool = False
) -> np.ndarray:
    """(n items, 1280) embeddings of the catalogue, from the embedding cache (fills misses)."""
    from encoders import ImageEncoder
    from encoders.cache import EmbeddingCache, embed_catalogue
    from encoders.registry import ensure_model
    from streams.settings import get_settings

    encoder = ImageEncoder(ensure_model(get_settings().model_dir), device="cpu")
    with EmbeddingCache(cache_path) as cache:
        return embed_catalogue(
            encoder, items.image_paths(), cache, progress=progress, errors="zero"
        )


BASELINES = (
    "popularity",
    "repurchase",
    "itemcf",
    "visual",
    "visual_pop",
    "live",
    "live_nochannel",
    "live_novisual",
    "live_noprice",
)

#: The live core with one part switched off (settings overrides): its contribution.
LIVE_ABLATIONS: dict[str, dict[str, object]] = {
    "live": {},
    "live_nochannel": {"trending_channel_weights": {}},  # store purchases weigh as online ones
    "live_novisual": {"w_visual": 0.0},
    "live_noprice": {"rep_price_exponent": 0.0},
}


def run_baselines(
    names: Sequence[str],
    data_dir: Path = DEFAULT_HM_DIR,
    cutoff: str = DEV_CUTOFF,
    end: str = DEV_END,
    cache_path: Path | None = None,
) -> dict[str, dict[str, float | int]]:
    """Evaluate the named baselines on the dev split; ``{name: metrics + seconds}``."""
    from .data import load_hm

    items, events = load_hm(data_dir)
    split = dev_split(events, cutoff, end)
    history, truth, warm = split
    users = list(truth)
    emb = None
    if any(n.startswith("visual") for n in names):
        emb = catalogue_embeddings(items, cache_path)

    def live(overrides: dict[str, object]) -> Predictions:
        from vrec_tools.eval.livecore import live_lists, live_settings

        settings = live_settings(12, cache_path).model_copy(update=overrides)
        return live_lists(settings, users, data_dir=data_dir, cutoff=cutoff, end=end)

    runs = {
        "popularity": lambda: popularity(history, users, 7, cutoff=cutoff),
        "repurchase": lambda: repurchase(history, users, cutoff=cutoff),
        "itemcf": lambda: itemcf(history, users, cutoff=cutoff),
        "visual": lambda: visual(history, users, emb, cutoff=cutoff),
        "visual_pop": lambda: visual(history, users, emb, pop_weight=0.05, cutoff=cutoff),
        **{name: (lambda o=o: live(o)) for name, o in LIVE_ABLATIONS.items()},
    }
    out: dict[str, dict[str, float | int]] = {}
    for name in names:
        t0 = time.perf_counter()
        preds = runs[name]()
        res = evaluate(preds, truth, warm, catalogue_size=len(items))
        res["seconds"] = round(time.perf_counter() - t0, 2)
        out[name] = res
    return out


def format_table(results: dict[str, dict[str, float | int]]) -> str:
    cols = [
        "map_all", "map_warm", "hr_all", "hr_warm", "recall_all", "recall_warm",
        "ndcg_all", "ndcg_warm", "coverage", "seconds",
    ]  # fmt: skip
    lines = [f"{'baseline':<16}" + " ".join(f"{c:>11}" for c in cols)]
    for name, res in results.items():
        cells = [f"{res.get(c, float('nan')):11.4f}" for c in cols]
        lines.append(f"{name:<16}" + " ".join(cells))
    first = next(iter(results.values()), {})
    lines.append(f"users {first.get('users')}, warm users {first.get('warm_users')}")
    return "\n".join(lines)


def add_args(parser: argparse.ArgumentParser) -> None:
    """``vrec eval baselines``'s arguments."""
    parser.add_argument("--baseline", default="all", choices=(*BASELINES, "all"))
    parser.add_argument("--data", type=Path, default=DEFAULT_HM_DIR)
    parser.add_argument("--cutoff", default=DEV_CUTOFF)
    parser.add_argument("--end", default=DEV_END)
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (sqlite)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def run(args: argparse.Namespace) -> int:
    """``vrec eval baselines``: the table of the chosen baselines on the dev split."""
    names = BASELINES if args.baseline == "all" else (args.baseline,)
    results = run_baselines(names, args.data, args.cutoff, args.end, args.cache)
    print(format_table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
