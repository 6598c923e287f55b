"""Kafka topics of the pipeline: inputs -> internal -> outputs."""

from __future__ import annotations

from dataclasses import dataclass

import faust
from aiokafka.partitioner import murmur2

from streams.settings import Settings, StreamingSettings

# Values travel as raw JSON bytes: the agents validate them with pydantic themselves so that a bad
# record becomes a dead letter instead of a deserialisation crash inside Faust.
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}

COMPACTED = ("item_embeddings",)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition of a keyed record: aiokafka's default partitioner (murmur2 of the key), the
    one that placed keyed records before the agents sent whole record batches."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Topics:
    products: faust.TopicT
    interactions: faust.TopicT  # views + purchases, one stream
    user_events: faust.TopicT
    recommendations: faust.TopicT
    trending: faust.TopicT  # the list for users not seen yet, keyed by user-events partition
    item_embeddings: faust.TopicT
    dead_letters: faust.TopicT

    @classmethod
    def declare(cls, app: faust.App, streaming: StreamingSettings) -> Topics:
        names = streaming.topics
        p = streaming.partitions
        return cls(
            products=app.topic(names.full("products"), partitions=p, **_RAW),
            interactions=app.topic(names.full("views"), names.full("purchases"), **_RAW),
            user_events=app.topic(names.full("user_events"), partitions=p, **_RAW),
            recommendations=app.topic(names.full("recommendations"), partitions=p, **_RAW),
            trending=app.topic(names.full("trending"), partitions=1, **_RAW),
            item_embeddings=app.topic(
                names.full("item_embeddings"), partitions=p, compacting=True, **_RAW
            ),
            dead_letters=app.topic(names.full("dead_letters"), partitions=1, **_RAW),
        )


def all_topic_names(streaming: StreamingSettings | Settings) -> list[str]:
    t = streaming.topics
    return [
        t.full(n)
        for n in (
            "products",
            "views",
            "purchases",
            "user_events",
            "recommendations",
            "trending",
            "item_embeddings",
            "dead_letters",
        )
    ]


def compacted_topic_names(streaming: StreamingSettings | Settings) -> list[str]:
    return [streaming.topics.full(n) for n in COMPACTED]
