"""Who was active in which day, per partition, until a clock mark closes the day (pure).

The users agent notes every (partition, day bucket, user) it folds an event for. A clock mark
(:class:`~streams.events.Tick`) closes the buckets before its own; the users active in them get
their list re-ranked once with the closed days' final popularity. Buckets that fall out of the
trending window without a clock mark are forgotten, so the set stays bounded when no scheduler
sends marks.
"""

from __future__ import annotations

from collections.abc import Iterator


class ActiveDays:
    def __init__(self) -> None:
        self._users: dict[int, dict[int, set[str]]] = {}  # partition -> bucket -> users

    def add(self, partition: int, bucket: int, user_id: str) -> bool:
        """Note an active user; True when the (partition, bucket, user) cell is new."""
        users = self._users.setdefault(partition, {}).setdefault(bucket, set())
        if user_id in users:
            return False
        users.add(user_id)
        return True

    def closing(self, partition: int, before: int) -> dict[str, list[int]]:
        """Users active in the partition's buckets ``< before``: user -> their buckets."""
        out: dict[str, list[int]] = {}
        for bucket, users in sorted(self._users.get(partition, {}).items()):
            if bucket < before:
                for user_id in users:
                    out.setdefault(user_id, []).append(bucket)
        return out

    def discard(self, partition: int, bucket: int, user_id: str) -> None:
        buckets = self._users.get(partition, {})
        users = buckets.get(bucket)
        if users is not None:
            users.discard(user_id)
            if not users:
                del buckets[bucket]

    def expire(self, partition: int, oldest: int) -> list[tuple[int, str]]:
        """Forget the buckets ``< oldest``; returns the (bucket, user) cells dropped."""
        buckets = self._users.get(partition, {})
        dropped = [(b, u) for b in sorted(buckets) if b < oldest for u in sorted(buckets[b])]
        for b in [b for b in buckets if b < oldest]:
            del buckets[b]
        return dropped

    def cells(self) -> Iterator[tuple[int, int, str]]:
        for partition, buckets in self._users.items():
            for bucket, users in buckets.items():
                for user_id in users:
                    yield partition, bucket, user_id

    def __len__(self) -> int:
        return sum(len(u) for b in self._users.values() for u in b.values())
