"""Offline evaluation: H&M dev split, ranking metrics and offline baselines.

``metrics`` holds pure metric functions, ``data`` loads the H&M files and makes the dev split,
``baselines`` builds the offline reference recommenders (``vrec eval baselines``).
"""

from __future__ import annotations

from .metrics import (
    apk,
    coverage,
    evaluate,
    hit_rate_at_k,
    map_at_k,
    ndcg_at_k,
    recall_at_k,
)

__all__ = [
    "apk",
    "coverage",
    "evaluate",
    "hit_rate_at_k",
    "map_at_k",
    "ndcg_at_k",
    "recall_at_k",
]
