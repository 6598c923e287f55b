"""Ranking metrics for top-k recommendation lists (pure functions, no I/O).

``apk``/``map_at_k`` follow the Kaggle "H&M Personalized Fashion Recommendations" definition:
for one user, ``AP@12 = sum_{k<=12} P(k) * rel(k) / min(12, |actual|)``, where ``rel(k)`` is 1
if the item at rank ``k`` is relevant and ``P(k)`` is the precision of the top ``k``. A
prediction repeated in the list counts only the first time. A user with no actual items
scores 0 (Kaggle's convention). All other metrics use binary relevance as well and also
drop repeated predictions before cutting at ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence

__all__ = [
    "METRICS",
    "apk",
    "coverage",
    "evaluate",
    "hit_rate_at_k",
    "map_at_k",
    "ndcg_at_k",
    "recall_at_k",
]


def _top_k(predicted: Iterable[Hashable], k: int) -> list[Hashable]:
    """First ``k`` distinct items of ``predicted``, order kept."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    seen: set[Hashable] = set()
    out: list[Hashable] = []
    for p in predicted:
        if p not in seen:
            seen.add(p)
            out.append(p)
            if len(out) == k:
                break
    return out


def apk(actual: Collection[Hashable], predicted: Sequence[Hashable], k: int = 12) -> float:
    """Average precision at ``k`` (H&M/Kaggle definition; duplicates count once)."""
    if not actual:
        return 0.0
    actual = set(actual)
    hits = 0
    score = 0.0
    for i, p in enumerate(_top_k(predicted, k), start=1):
        if p in actual:
            hits += 1
            score += hits / i
    return score / min(k, len(actual))


def hit_rate_at_k(
    actual: Collection[Hashable], predicted: Sequence[Hashable], k: int = 12
) -> float:
    """1.0 if any of the top ``k`` is relevant, else 0.0."""
    if not actual:
        return 0.0
    actual = set(actual)
    return 1.0 if any(p in actual for p in _top_k(predicted, k)) else 0.0


def recall_at_k(actual: Collection[Hashable], predicted: Sequence[Hashable], k: int = 12) -> float:
    """Share of ``actual`` found in the top ``k`` (0 for an empty ``actual``)."""
    if not actual:
        return 0.0
    actual = set(actual)
    return sum(p in actual for p in _top_k(predicted, k)) / len(actual)


def ndcg_at_k(actual: Collection[Hashable], predicted: Sequence[Hashable], k: int = 12) -> float:
    """Binary-relevance NDCG@k; the ideal list has ``min(k, |actual|)`` hits on top."""
    if not actual:
        return 0.0
    actual = set(actual)
    dcg = sum(
        1.0 / math.log2(i + 1) for i, p in enumerate(_top_k(predicted, k), start=1) if p in actual
    )
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(actual)) + 1))
    return dcg / ideal


METRICS = {"map": apk, "hr": hit_rate_at_k, "recall": recall_at_k, "ndcg": ndcg_at_k}


def _mean_over(
    metric,  # noqa: ANN001 - one of METRICS
    truth: Mapping[Hashable, Collection[Hashable]],
    predictions: Mapping[Hashable, Sequence[Hashable]],
    users: Iterable[Hashable],
    k: int,
) -> float:
    users = list(users)
    if not users:
        return 0.0
    return sum(metric(truth[u], predictions.get(u, ()), k) for u in users) / len(users)


def map_at_k(
    truth: Mapping[Hashable, Collection[Hashable]],
    predictions: Mapping[Hashable, Sequence[Hashable]],
    k: int = 12,
) -> float:
    """Mean of :func:`apk` over the users of ``truth``; a user with no prediction scores 0."""
    return _mean_over(apk, truth, predictions, truth, k)


def coverage(lists: Iterable[Sequence[Hashable]], catalogue_size: int, k: int = 12) -> float:
    """Share of the catalogue that appears in at least one top-``k`` list."""
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be > 0")
    items: set[Hashable] = set()
    for lst in lists:
        items.update(_top_k(lst, k))
    return len(items) / catalogue_size


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of a mean over independent units (e.g. customers)."""
    import numpy as np

    if not len(values):
        return 0.0, 0.0
    from vrec_tools.eval.online import resamples

    arr = np.asarray(values, dtype=np.float64)
    means = np.concatenate([arr[idx].mean(axis=1) for idx in resamples(len(arr), n_boot, seed)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def by_variant(
    predictions: Mapping[Hashable, Sequence[Hashable]],
    truth: Mapping[Hashable, Collection[Hashable]],
    warm_users: Collection[Hashable],
    assign,  # user -> variant name
    k: int = 12,
) -> dict[str, dict[str, float | int | tuple[float, float]]]:
    """:func:`evaluate` per experiment variant of the truth users, with bootstrap intervals of
    MAP@k for all and for warm customers."""
    groups: dict[str, dict] = {}
    for user, items in truth.items():
        groups.setdefault(assign(user), {})[user] = items
    out = {}
    for variant, sub in sorted(groups.items()):
        m: dict = dict(evaluate(predictions, sub, warm_users, k=k))
        apks = {u: apk(items, predictions.get(u, ()), k) for u, items in sub.items()}
        m["map_all_ci"] = bootstrap_ci(list(apks.values()))
        m["map_warm_ci"] = bootstrap_ci([v for u, v in apks.items() if u in warm_users])
        out[variant] = m
    return out


def evaluate(
    predictions: Mapping[Hashable, Sequence[Hashable]],
    truth: Mapping[Hashable, Collection[Hashable]],
    warm_users: Collection[Hashable],
    k: int = 12,
    catalogue_size: int | None = None,
) -> dict[str, float | int]:
    """Every metric of :data:`METRICS` at ``k`` for all truth users and for the warm ones.

    Keys: ``map_all``, ``map_warm``, ``hr_all``, ... ``ndcg_warm``; ``users`` (truth users),
    ``warm_users`` (truth users in ``warm_users``), ``predicted_users`` (truth users with a
    prediction) and, if ``catalogue_size`` is given, ``coverage`` over the truth users' lists.
    Truth users without a prediction count as zero; predictions for other users are ignored.
    """
    warm = [u for u in truth if u in warm_users]
    out: dict[str, float | int] = {}
    for name, metric in METRICS.items():
        out[f"{name}_all"] = _mean_over(metric, truth, predictions, truth, k)
        out[f"{name}_warm"] = _mean_over(metric, truth, predictions, warm, k)
    out["users"] = len(truth)
    out["warm_users"] = len(warm)
    out["predicted_users"] = sum(1 for u in truth if u in predictions)
    if catalogue_size is not None:
        out["coverage"] = coverage((predictions.get(u, ()) for u in truth), catalogue_size, k)
    return out
