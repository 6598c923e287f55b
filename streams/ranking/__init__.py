"""Ranking: pure functions over vectors and counts (no Kafka, no store)."""

from streams.ranking.reasons import Reason
from streams.ranking.trending import Trending
from streams.ranking.visual import Scored, fill, rank_by_similarity, top_trending

__all__ = ["Reason", "Scored", "Trending", "fill", "rank_by_similarity", "top_trending"]
