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
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from streams.ranking.visual import Scored

REASONS = {
    "rep": "bought before",
    "sib": "same product",
    "cf": "bought together",
    "vis": "visually similar",
    "pop": "trending",
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


def _scaled(signal: Mapping[str, float]) -> dict[str, float]:
    top = max(signal.values(), default=0.0)
    return {i: v / top for i, v in signal.items()} if top > 0 else {}


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
    """Top-k candidates by the blended score; each item's reason is its largest contribution."""
    rep_s, sib_s, cf_s = _scaled(rep), _scaled(sib), _scaled(cf)
    pop_max = max(pop.values(), default=0.0)
    pop_den = math.log1p(pop_max) if pop_max > 0 else 1.0
    scored = []
    for j in set(candidates):
        if j in exclude:
            continue
        parts = {
            "rep": weights.rep * rep_s.get(j, 0.0),
            "sib": weights.sib * sib_s.get(j, 0.0),
            "cf": weights.cf * cf_s.get(j, 0.0),
            "vis": weights.vis * vis.get(j, 0.0),
            "pop": weights.pop * math.log1p(pop.get(j, 0.0)) / pop_den,
        }
        reason = max(parts, key=lambda name: (parts[name], name))
        scored.append(Scored(j, sum(parts.values()), REASONS[reason]))
    scored.sort(key=lambda s: (-s.score, s.item_id))
    return scored[:k]
