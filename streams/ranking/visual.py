"""Visual similarity ranking and list filling (pure)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from streams.ranking.reasons import Reason
from streams.ranking.trending import Trending


@dataclass(frozen=True)
class Scored:
    """One ranked item: its score, the reason it is listed and the user's item behind that."""

    item_id: str
    score: float
    reason: Reason
    because: str | None = None


def _order(scored: Iterable[Scored]) -> list[Scored]:
    # Best score first; equal scores (identical images) broken by item id: deterministic output.
    return sorted(scored, key=lambda s: (-s.score, s.item_id))


def rank_by_similarity(
    user_vector: np.ndarray,
    candidates: Sequence[tuple[str, np.ndarray]],
    k: int,
    exclude: Collection[str] = (),
    reason: Reason = Reason.VISUAL,
) -> list[Scored]:
    """Top-k candidates by cosine similarity to the user vector, in float64."""
    kept = [(i, v) for i, v in candidates if i not in exclude]
    if not kept or k <= 0:
        return []
    u = np.asarray(user_vector, dtype=np.float64)
    norm = np.linalg.norm(u)
    if norm == 0:
        return []
    mat = np.stack([np.asarray(v, dtype=np.float64) for _, v in kept])
    sims = mat @ (u / norm) / np.maximum(np.linalg.norm(mat, axis=1), 1e-12)
    return _order(Scored(i, float(s), reason) for (i, _), s in zip(kept, sims))[:k]


def top_trending(trending: Trending, k: int, exclude: Collection[str] = ()) -> list[Scored]:
    """The trending list as recommendations."""
    return [Scored(i, s, Reason.TRENDING) for i, s in trending.top(k, exclude)]


def fill(primary: Sequence[Scored], filler: Sequence[Scored], k: int) -> list[Scored]:
    """``primary`` first, then filler items not already listed, up to k."""
    out = list(primary[:k])
    have = {s.item_id for s in out}
    for s in filler:
        if len(out) >= k:
            break
        if s.item_id not in have:
            out.append(s)
            have.add(s.item_id)
    return out
