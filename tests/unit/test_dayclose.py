"""streams.dayclose: the users active per open day, closed by clock marks."""

from __future__ import annotations

from streams.dayclose import ActiveDays
from streams.tables import active_key, parse_active_key


def test_add_is_new_once_per_partition_day_and_user():
    a = ActiveDays()
    assert a.add(0, 10, "u1") and not a.add(0, 10, "u1")
    assert a.add(0, 11, "u1") and a.add(1, 10, "u1") and a.add(0, 10, "u2")
    assert len(a) == 4
    assert sorted(a.cells()) == [(0, 10, "u1"), (0, 10, "u2"), (0, 11, "u1"), (1, 10, "u1")]


def test_closing_lists_each_user_once_with_the_closed_days_only():
    a = ActiveDays()
    for p, b, u in [(0, 10, "u1"), (0, 11, "u1"), (0, 11, "u2"), (0, 12, "u3"), (1, 10, "u4")]:
        a.add(p, b, u)
    assert a.closing(0, 12) == {"u1": [10, 11], "u2": [11]}  # day 12 still open, u4 elsewhere
    assert a.closing(0, 10) == {}
    assert a.closing(1, 11) == {"u4": [10]}
    assert a.closing(2, 99) == {}


def test_discard_after_closing_leaves_nothing_to_close_again():
    a = ActiveDays()
    a.add(0, 10, "u1")
    a.add(0, 10, "u2")
    for user, days in a.closing(0, 11).items():
        for day in days:
            a.discard(0, day, user)
    assert a.closing(0, 11) == {} and len(a) == 0
    a.discard(0, 10, "u1")  # twice (a redelivered mark): no error
    a.discard(5, 1, "nobody")


def test_expire_forgets_days_outside_the_window():
    a = ActiveDays()
    for b in (1, 2, 3, 4):
        a.add(0, b, f"u{b}")
    a.add(1, 1, "v")
    assert a.expire(0, 3) == [(1, "u1"), (2, "u2")]
    assert a.closing(0, 99) == {"u3": [3], "u4": [4]}
    assert a.expire(0, 3) == []
    assert a.closing(1, 99) == {"v": [1]}  # other partitions untouched


def test_keys_round_trip_user_ids_with_separators():
    key = active_key(3, 18_521, "cust|omer")
    assert parse_active_key(key) == (3, 18_521, "cust|omer")
