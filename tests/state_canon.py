"""A user state as a comparable tuple, shared by the unit tests of the state and the batch."""

from __future__ import annotations

import struct

from streams.userstate import UserState


def bits(x: float | None) -> bytes | None:
    """A float's bit pattern (so -0.0 != 0.0 and NaNs compare), None kept."""
    return None if x is None else struct.pack("<d", x)


def canon(s: UserState) -> tuple:
    """Every field of a state, floats as bit patterns, item and history order kept."""
    return (
        s.user_id,
        bits(s.wsum),
        bits(s.ref_ts),
        bits(s.last_ts),
        s.n_events,
        [
            (i, bits(st.vw), bits(st.rep), bits(st.bought_ts), bits(st.touched_ts))
            for i, st in s.items.items()
        ],
        [(h.item_id, h.kind, bits(h.ts), h.event_hash) for h in s.history],
        sorted(s.offsets.items()),
        sorted(s.sources.items()),
        s.last_list,
        all(type(p) is int and type(o) is int for p, o in s.offsets.items()),
    )
