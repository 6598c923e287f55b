"""The hybrid ranker: repurchase, same-product siblings, co-purchase, visual, popularity (pure).

Each signal is scaled to at most 1 for the user (divided by its maximum over the candidates)
and blended: ``score = w_rep*rep + w_sib*sib + w_cf*cf + w_vis*cos + w_pop*log1p(pop)/log1p(max)``.
Candidates: the user's purchases, their siblings, their co-purchase neighbours and the trending
head; visual similarity re-ranks them (alone it is weak on fashion purchases).

Two refinements tuned on the H&M dev split (issue 3): a purchase counts in ``rep`` and ``sib`` in
proportion to the item's catalogue price, relative to the user's dearest purchase, raised to
``price_exponent`` (:func:`price_weighted`: dear items -- trousers, dresses, shoes -- are bought
again, often in another size or colour, far more than cheap ones), and a sibling's score is
multiplied by ``1 + sib_pop * log1p(pop_j) / log1p(max pop)`` (:func:`boost_by_popularity`: the
colours people buy right now).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streams.ranking.reasons import Reason
from streams.ranking.visual import Scored

# the reason rule's order: the largest contribution wins, ties to the later name
SIGNALS = ("cf", "pop", "rep", "sib", "vis")
REASONS = {
    "rep": Reason.REPURCHASE,
    "sib": Reason.SIBLING,
    "cf": Reason.COPURCHASE,
    "vis": Reason.VISUAL,
    "pop": Reason.TRENDING,
}


@dataclass(frozen=True)
class HybridWeights:
    rep: float = 1.0
    sib: float = 0.0
    cf: float = 0.3
    vis: float = 0.5
    pop: float = 0.3

    price_exponent: float = 0.0
    sib_pop: float = 0.0

    @classmethod
    def from_settings(cls, s) -> HybridWeights:
        return cls(
            rep=s.w_repurchase,
            sib=s.w_sibling,
            cf=s.w_copurchase,
            vis=s.w_visual,
            pop=s.w_popularity,
            price_exponent=s.rep_price_exponent,
            sib_pop=s.sibling_pop_boost,
        )


def _column(signal: Mapping[str, float], ids: Sequence[str]) -> np.ndarray:
    get = signal.get
    return np.fromiter((get(j, 0.0) for j in ids), dtype=np.float64, count=len(ids))


def price_weighted(
    rep: Mapping[str, float], price_of: Mapping[str, float], exponent: float
) -> dict[str, float]:
    """``rep_i * (price_i / max price over the user's items) ** exponent``.

    Items without a (positive) price weigh as much as the dearest one; ``exponent`` 0 or no
    prices at all leave ``rep`` unchanged.
    """
    if not exponent:
        return dict(rep)
    prices = {i: float(price_of[i]) for i in rep if (price_of.get(i) or 0.0) > 0}
    if not prices:
        return dict(rep)
    top = max(prices.values())
    return {i: w * (prices[i] / top) ** exponent if i in prices else w for i, w in rep.items()}


def boost_by_popularity(
    signal: Mapping[str, float], pop: Mapping[str, float], pop_max: float, boost: float
) -> dict[str, float]:
    """``signal_j * (1 + boost * log1p(pop_j) / log1p(pop_max))`` (unchanged for boost 0)."""
    if not boost or pop_max <= 0:
        return dict(signal)
    den = math.log1p(pop_max)
    return {j: v * (1.0 + boost * math.log1p(pop.get(j, 0.0)) / den) for j, v in signal.items()}


def sibling_scores(
    rep: Mapping[str, float], code_of: Mapping[str, str], members: Mapping[str, Collection[str]]
) -> dict[str, float]:
    """``sib_j = sum of rep_i over purchased i with the same product code as j, i != j``."""
    out: dict[str, float] = {}
    for i, w in rep.items():
        code = code_of.get(i)
        if code is None:
            continue
        for j in members.get(code, ()):
            if j != i:
                out[j] = out.get(j, 0.0) + w
    return out


def hybrid_rank(
    *,
    candidates: Iterable[str],
    rep: Mapping[str, float],
    sib: Mapping[str, float],
    cf: Mapping[str, float],
    vis: Mapping[str, float],
    pop: Mapping[str, float],
    weights: HybridWeights,
    k: int,
    exclude: Collection[str] = (),
) -> list[Scored]:
    """Top-k candidates by the blended score (:func:`blend` over per-item mappings)."""
    ids = list(dict.fromkeys(candidates))
    keep = np.fromiter((j not in exclude for j in ids), dtype=bool, count=len(ids))
    return blend(
        ids,
        rep=_column(rep, ids),
        sib=_column(sib, ids),
        cf=_column(cf, ids),
        vis=_column(vis, ids),
        pop=_column(pop, ids),
        weights=weights,
        k=k,
        keep=keep,
    )


def blend(
    ids: Sequence[str],
    *,
    rep: np.ndarray,
    sib: np.ndarray,
    cf: np.ndarray,
    vis: np.ndarray,
    pop: np.ndarray,
    weights: HybridWeights,
    k: int,
    keep: np.ndarray | None = None,
) -> list[Scored]:
    """The blend over one user's candidate arrays aligned with ``ids`` (:func:`blend_rows`)."""
    n = len(ids)
    if n == 0 or k <= 0:
        return []
    return blend_rows(
        lambda _, col: ids[col],
        rep=rep[None, :],
        sib=sib[None, :],
        cf=cf[None, :],
        vis=vis[None, :],
        pop=pop[None, :],
        weights=weights,
        k=k,
        keep=np.ones((1, n), dtype=bool) if keep is None else keep[None, :],
    )[0]


def blend_rows(
    item_at: Callable[[int, int], str],
    *,
    rep: np.ndarray,
    sib: np.ndarray,
    cf: np.ndarray,
    vis: np.ndarray,
    pop: np.ndarray,
    weights: HybridWeights,
    k: int,
    keep: np.ndarray,
) -> list[list[Scored]]:
    """The blend for many users: row ``u`` of each (users x candidates) array is user ``u``'s
    candidates, ``item_at(u, column)`` their ids, ``keep`` False for excluded candidates and for
    padding (whose signals must be 0). Each row's top-k kept candidates by score desc, then item
    id; each item's reason is its largest contribution (on a tie, the later signal name).

    ``rep``, ``sib`` and ``cf`` are raw (>= 0) and scaled here by their maximum over the row's
    candidates (excluded ones too), popularity by ``log1p`` of the row's largest ``pop``; ``vis``
    is a cosine.
    """
    n_rows, width = keep.shape
    if n_rows == 0 or width == 0 or k <= 0:
        return [[] for _ in range(n_rows)]
    parts = blend_parts(rep=rep, sib=sib, cf=cf, pop=pop, weights=weights)
    return blend_parts_rows(item_at, parts=parts, vis=vis, weights=weights, k=k, keep=keep)


def blend_parts_rows(
    item_at: Callable[[int, int], str],
    *,
    parts: Mapping[str, np.ndarray],
    vis: np.ndarray,
    weights: HybridWeights,
    k: int,
    keep: np.ndarray,
) -> list[list[Scored]]:
    """:func:`blend_rows` from the non-visual parts already weighed (:func:`blend_parts`), for
    a caller that needs them first (:func:`cosines_needed`)."""
    n_rows, width = keep.shape
    if n_rows == 0 or width == 0 or k <= 0:
        return [[] for _ in range(n_rows)]
    parts = {**parts, "vis": weights.vis * vis}
    total = parts["rep"] + parts["sib"] + parts["cf"] + parts["vis"] + parts["pop"]
    total = np.where(keep, total, -np.inf)
    m = min(k, width)
    kth = -np.partition(-total, m - 1, axis=1)[:, m - 1 : m]  # each row's m-th best score
    rows, cols = np.nonzero(keep & (total >= kth))  # the top m and any ties with the m-th
    by_signal = np.stack([parts[name][rows, cols] for name in SIGNALS])
    reason_at = len(SIGNALS) - 1 - np.argmax(by_signal[::-1], axis=0)
    picked: list[list[tuple[float, str, int]]] = [[] for _ in range(n_rows)]
    for u, col, value, r in zip(
        rows.tolist(), cols.tolist(), total[rows, cols].tolist(), reason_at.tolist()
    ):
        picked[u].append((-value, item_at(u, col), r))
    out = []
    for best in picked:
        best.sort()
        out.append([Scored(item, -neg, REASONS[SIGNALS[r]]) for neg, item, r in best[:k]])
    return out


def cosines_needed(
    *,
    parts: Mapping[str, np.ndarray],
    vis: np.ndarray,
    vis_known: np.ndarray,
    vis_low: np.ndarray,
    vis_high: np.ndarray | float = 1.0,
    weights: HybridWeights,
    k: int,
    keep: np.ndarray,
) -> np.ndarray:
    """The candidates of :func:`blend_rows` whose cosine can change a row's top-k (a mask).

    ``parts``: the rows' non-visual parts (:func:`blend_parts`); ``vis`` holds the cosines
    already known (``vis_known``); an unknown one lies in ``[vis_low, vis_high]`` (arrays that
    broadcast to the candidates' shape: a range per row, ``(rows, 1)``, or per candidate). A
    row's k-th best score is at least the k-th largest of its candidates' lowest possible
    scores; a candidate whose highest possible score is below that is not listed whatever its
    cosine, so its cosine need not be computed (nor its vector read). With any value in the
    range for the others, :func:`blend_rows` lists the same items with the same scores. Bounds
    carry a small margin for rounding.
    """
    n_rows, width = keep.shape
    unknown = keep & ~vis_known
    if n_rows == 0 or width == 0 or k <= 0 or not unknown.any():
        return unknown
    rest = parts["rep"] + parts["sib"] + parts["cf"] + parts["pop"]
    w = weights.vis
    at_low, at_high = w * np.asarray(vis_low), w * np.asarray(vis_high)
    lows, highs = np.minimum(at_low, at_high), np.maximum(at_low, at_high)  # w may be < 0
    margin = 1e-9 * (1.0 + np.abs(rest))
    low = np.where(vis_known, rest + w * vis, rest + lows) - margin
    high = rest + highs + margin
    low = np.where(keep, low, -np.inf)
    m = min(k, width)
    kth_low = -np.partition(-low, m - 1, axis=1)[:, m - 1 : m]
    return unknown & (high >= kth_low)


def blend_parts(
    *, rep: np.ndarray, sib: np.ndarray, cf: np.ndarray, pop: np.ndarray, weights: HybridWeights
) -> dict[str, np.ndarray]:
    """The weighted non-visual parts of the blend, each (rows x candidates), scaled as
    :func:`blend_rows` says."""
    pop_max = pop.max(axis=1, keepdims=True)
    return {
        "rep": weights.rep * _scale_rows(rep),
        "sib": weights.sib * _scale_rows(sib),
        "cf": weights.cf * _scale_rows(cf),
        "pop": weights.pop * np.log1p(pop) / np.where(pop_max > 0, np.log1p(pop_max), 1.0),
    }


def top_by_score(ids: Sequence[str], scores: np.ndarray, m: int) -> list[int]:
    """Positions of the ``m`` best scores, ordered by (score desc, item id)."""
    n = len(ids)
    if m >= n:
        tied = range(n)
    else:  # every candidate scoring at least the m-th best (ties at the boundary included)
        threshold = np.partition(scores, n - m)[n - m]
        tied = np.flatnonzero(scores >= threshold).tolist()
    values = scores.tolist()
    return sorted(tied, key=lambda j: (-values[j], ids[j]))[:m]


def _scale_rows(signal: np.ndarray) -> np.ndarray:
    """Each row divided by its maximum (a row of zeros stays zeros)."""
    top = signal.max(axis=1, keepdims=True)
    return np.divide(signal, top, out=np.zeros_like(signal, dtype=np.float64), where=top > 0)
