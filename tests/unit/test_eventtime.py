"""streams.eventtime: one record's ts cannot run ahead of the clock or jump a partition's time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.eventtime import EventClock, EventTimeConfig

DAY = 86_400.0
NOW = 1_764_000_000.0  # 2025-11
SRC = ("views", 0)


def clock(**kw) -> EventClock:
    return EventClock(EventTimeConfig(**kw))


def test_far_future_and_milliseconds_are_refused_with_a_reason():
    c = clock()
    assert c.check(SRC, NOW - 10, NOW).ts == NOW - 10
    year_3000 = c.check(SRC, 32_503_680_000.0, NOW)
    assert year_3000.ts is None and "3000-01-01" in year_3000.reason
    millis = c.check(SRC, NOW * 1000, NOW)
    assert millis.ts is None and "milliseconds?" in millis.reason and "2025-11" in millis.reason
    assert c.check(SRC, NOW + 3000, NOW).ts == NOW + 3000  # within the hour of skew
    assert c.check(SRC, NOW + 3700, NOW).ts is None


def test_milliseconds_are_refused_without_a_record_timestamp():
    assert clock().check(SRC, NOW * 1000, None).ts is None


def test_a_replay_of_old_history_passes_but_cannot_jump_ahead():
    """Record timestamps are now, event times years back and moving day by day."""
    c = clock()
    t = NOW - 5 * 365 * DAY
    for day in range(30):
        assert c.check(SRC, t + day * DAY, NOW + day).ts == t + day * DAY
    # a forged record a year ahead of the replay's time, still in the past of the wall clock
    forged = c.check(SRC, t + 400 * DAY, NOW + 31)
    assert forged.ts is None and "partition's event time" in forged.reason
    assert c.check(SRC, t + 30 * DAY, NOW + 32).ts == t + 30 * DAY  # the watermark held
    # another partition has its own time
    assert c.check(("views", 1), t + 400 * DAY, NOW).ts == t + 400 * DAY


def test_a_quiet_shop_may_move_on_with_the_record_clock():
    c = clock(max_jump_s=DAY)
    assert c.check(SRC, NOW, NOW).ts == NOW
    # ten days without events: the event time moves ten days, and so did the record clock
    assert c.check(SRC, NOW + 10 * DAY, NOW + 10 * DAY).ts == NOW + 10 * DAY


def test_late_records_and_clock_marks():
    c = clock(max_late_s=2 * DAY)
    assert c.check(SRC, NOW, NOW).ts == NOW
    late = c.check(SRC, NOW - 3 * DAY, NOW)
    assert late.ts is None and "later than" in late.reason
    assert c.check(SRC, NOW - DAY, NOW).ts == NOW - DAY
    assert c.check(SRC, NOW - 3 * DAY, NOW, tick=True).ts == NOW - 3 * DAY  # an old mark
    assert clock(max_late_s=None).check(SRC, 0.0, NOW).ts == 0.0


def test_clamp_policy():
    c = clock(policy="clamp")
    v = c.check(SRC, NOW * 1000, NOW)
    assert v.ts == NOW + 3600 and v.reason.startswith("clamped")
    assert c.check(SRC, NOW - 40 * DAY, NOW).ts == NOW + 3600 - 30 * DAY


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-1e13, 1e13, allow_nan=False),
            st.one_of(st.none(), st.floats(1e9, 2e9)),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_accepted_times_never_pass_the_bounds(records):
    """Whatever arrives, an accepted ts is at most max_future_s past its record's timestamp
    and the watermark never moves more than max_jump_s past the record clock's advance."""
    cfg = EventTimeConfig()
    c = EventClock(cfg)
    for ts, record_ts, tick in records:
        before = c.marks.get(SRC)
        v = c.check(SRC, ts, record_ts, tick=tick)
        if v.ts is None:
            assert v.reason and c.marks.get(SRC) == before
            continue
        assert v.ts == ts and v.ts <= 1e11
        if record_ts is not None:
            assert v.ts <= record_ts + cfg.max_future_s
        if before is not None and before[1] is not None and record_ts is not None:
            assert v.ts <= before[0] + cfg.max_jump_s + max(0.0, record_ts - before[1])
