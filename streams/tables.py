"""Changelog-backed Faust tables (``Settings.tables.store``: in memory, rebuilt from the changelog
at start, by default), their key layouts and value layouts.

Each trending and co-purchase cell holds the ``user-events`` offset of the last record that
changed it. A batch redelivered after a crash that wrote some of its cells but not the user
states folds again, and a cell already holding a record's effect (its offset >= the record's) is
not counted twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import faust


def _raw_table(app: faust.App, name: str, partitions: int) -> faust.TableT:
    """A table of raw bytes keys/values (Faust would pick JSON from the types otherwise)."""
    table = app.Table(name, default=None, partitions=partitions, key_type=bytes, value_type=bytes)
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    return table


@dataclass(frozen=True)
class Tables:
    users: faust.TableT  # user_id -> UserState bytes (streams.userstate binary layout)
    # b"<partition>|<bucket>|<item_id>" -> JSON [count per kind..., offset] (trending_value)
    trending: faust.TableT
    # b"<partition>|<len(item)>|<item><neighbour>" -> b"<count> <offset>" (one cell per pair)
    copurchase: faust.TableT
    active: faust.TableT  # b"<partition>|<bucket>|<user_id>" -> b"1" (streams.dayclose)

    @classmethod
    def declare(cls, app: faust.App, partitions: int) -> Tables:
        p = partitions
        return cls(
            users=_raw_table(app, "users", p),
            trending=_raw_table(app, "trending", p),
            copurchase=_raw_table(app, "copurchase", p),
            active=_raw_table(app, "active", p),
        )


def trending_key(partition: int, bucket: int, item_id: str) -> bytes:
    return f"{partition}|{bucket}|{item_id}".encode()


def parse_trending_key(key: bytes) -> tuple[int, int, str]:
    p, b, item = key.decode().split("|", 2)
    return int(p), int(b), item


# The active-users table has the trending table's layout: partition | day bucket | user id.
active_key = trending_key
parse_active_key = parse_trending_key


def copurchase_key(partition: int, item_id: str, other: str) -> bytes:
    return f"{partition}|{len(item_id)}|{item_id}{other}".encode()


def parse_copurchase_key(key: bytes) -> tuple[int, str, str]:
    p, n, pair = key.decode().split("|", 2)
    return int(p), pair[: int(n)], pair[int(n) :]


def trending_value(counts: list[int], offset: int) -> bytes:
    return json.dumps([*counts, offset]).encode()


def parse_trending_value(raw: bytes) -> tuple[list[int], int]:
    """(count per kind, offset of the last record counted)."""
    *counts, offset = json.loads(raw)
    return [int(c) for c in counts], int(offset)


def copurchase_value(count: int, offset: int) -> bytes:
    return b"%d %d" % (count, offset)


def parse_copurchase_value(raw: bytes) -> tuple[int, int]:
    """(count, offset of the last record counted)."""
    count, offset = raw.split()
    return int(count), int(offset)
