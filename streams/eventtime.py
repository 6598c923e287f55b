"""Event-time policy: a record's ``ts`` may not run ahead of the clock or jump a partition's time.

The trending window, the day close and every user's decay follow event time, so one record with
a far-future ``ts`` (an attacker, or a client that sends epoch *milliseconds*) would expire every
trending cell and decay every history. The ingest agent checks each interaction and clock mark
against two clocks before it reaches ``user-events``:

- **the record's own Kafka timestamp** (when the producer or broker stamped it): ``ts`` may be at
  most ``max_future_s`` ahead of it. Replays of old logs pass (their ``ts`` lies in the past);
- **the source partition's event time** (its watermark: the newest ``ts`` accepted there, with
  the record timestamp it came with): ``ts`` may move past the watermark by at most
  ``max_jump_s`` plus the time the record timestamps advanced since (a quiet shop's next
  morning is no jump; None: no limit, the settings' default, since a replay of a sparse log
  moves months between two records), and may lie at most ``max_late_s`` behind it.

A record that breaks a rule is dead-lettered with the reason (``policy="dead_letter"``) or its
``ts`` is clamped to the nearest allowed time (``policy="clamp"``). The watermark lives in the
ingest agent's memory: after a restart the first record of a partition sets it again (the
record-timestamp rule still holds then).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

Policy = Literal["dead_letter", "clamp"]
MS_HINT_ABOVE = 1e11  # seconds since 1970 pass this in the year 5138; milliseconds since 1973


@dataclass(frozen=True)
class EventTimeConfig:
    """The policy; ``Settings.event_time`` builds it from the ``VREC_EVENT_TIME_*`` fields."""

    max_future_s: float = 3600.0
    max_jump_s: float | None = 7 * 86_400.0  # None: no limit
    max_late_s: float | None = 30 * 86_400.0  # None: any lateness accepted
    policy: Policy = "dead_letter"


@dataclass(frozen=True)
class Verdict:
    """``ts`` to use (None: refuse the record) and why it was changed or refused."""

    ts: float | None
    reason: str = ""


def _when(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f} s after 1970"


def _ahead(ts: float, bound: float, what: str) -> str:
    reason = f"ts {_when(ts)} is {ts - bound + 0.0:.0f} s past {what}"
    if ts > MS_HINT_ABOVE:
        reason += f" (milliseconds? {ts:.0f} ms would be {_when(ts / 1000.0)})"
    return reason


@dataclass
class EventClock:
    """The watermarks of the source partitions one ingest agent reads."""

    config: EventTimeConfig
    # (topic, partition) -> (newest ts accepted, the record timestamp it came with)
    marks: dict[tuple[str, int], tuple[float, float | None]] = field(default_factory=dict)

    def check(
        self, source: tuple[str, int], ts: float, record_ts: float | None, *, tick: bool = False
    ) -> Verdict:
        """Apply the policy to one record's ``ts`` (``record_ts``: its Kafka timestamp in
        seconds, None when it has none) and advance the watermark by what is accepted.
        A clock mark (``tick``) is never late: an old mark closes nothing new."""
        cfg = self.config
        bounds: list[tuple[float, str]] = [(MS_HINT_ABOVE, "any plausible time")]  # upper
        if record_ts is not None and record_ts > 0 and math.isfinite(record_ts):
            bounds.append((record_ts + cfg.max_future_s, "the record's timestamp"))
        mark = self.marks.get(source)
        if mark is not None and cfg.max_jump_s is not None:
            wm, wm_record = mark
            grace = 0.0
            if record_ts is not None and wm_record is not None:
                grace = max(0.0, record_ts - wm_record)
            bounds.append((wm + cfg.max_jump_s + grace, "the partition's event time"))
        reason = ""
        upper = min(bounds, default=None)
        if upper is not None and ts > upper[0]:
            reason = _ahead(ts, upper[0], f"the latest allowed by {upper[1]}")
            ts_ok = upper[0]
        elif (
            mark is not None
            and not tick
            and cfg.max_late_s is not None
            and ts < mark[0] - cfg.max_late_s
        ):
            reason = (
                f"ts {_when(ts)} is {mark[0] - cfg.max_late_s - ts:.0f} s later than the "
                f"partition's event time allows ({cfg.max_late_s:.0f} s behind {_when(mark[0])})"
            )
            ts_ok = mark[0] - cfg.max_late_s
        else:
            ts_ok = ts
        if reason and cfg.policy == "dead_letter":
            return Verdict(None, reason)
        if mark is None or ts_ok > mark[0]:
            self.marks[source] = (ts_ok, record_ts)
        return Verdict(ts_ok, f"clamped: {reason}" if reason else "")
