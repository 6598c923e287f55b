"""Changelog-backed Faust tables (RocksDB locally by default)."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from streams.settings import Settings

_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


@dataclass(frozen=True)
class Tables:
    users: faust.TableT  # user_id -> UserState bytes
    trending: faust.TableT  # b"<partition>|<bucket>|<item_id>" -> JSON counts per kind

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> Tables:
        p = settings.partitions
        return cls(
            users=app.Table("users", default=None, partitions=p, **_RAW),
            trending=app.Table("trending", default=None, partitions=p, **_RAW),
        )


def trending_key(partition: int, bucket: int, item_id: str) -> bytes:
    return f"{partition}|{bucket}|{item_id}".encode()


def parse_trending_key(key: bytes) -> tuple[int, int, str]:
    p, b, item = key.decode().split("|", 2)
    return int(p), int(b), item
