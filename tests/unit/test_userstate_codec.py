"""Property: the compact binary user state round-trips exactly; broken payloads are refused.

States are generated field by field (not only through ``fold``) to reach the layout's edges:
0.0 and -0.0, subnormals, huge and infinite values, negative and very large timestamps, unicode
user ids and item ids up to the 255-byte limit, empty history, history entries whose item was
forgotten (stored inline), 64-bit event hashes, many partitions in the offsets.

Equality is checked on a canonical form that compares floats by their bit patterns (so -0.0 is
not 0.0) and keeps the items' insertion order, which the layout preserves.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from state_canon import canon

from streams.userstate import (
    KINDS,
    STRATEGIES,
    TRIGGERS,
    DecayConfig,
    HistoryEntry,
    ItemStat,
    LastList,
    UserState,
)

MAX_EXAMPLES = 300  # the round trips
MAX_BROKEN = 150  # truncated, extended and corrupted payloads
_SETTINGS = dict(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_BROKEN = {**_SETTINGS, "max_examples": MAX_BROKEN}
# What decoding a truncated or corrupted payload raises today: ValueError (version, trailing
# bytes, invalid UTF-8), struct.error (a fixed-size field cut short) and IndexError (a count
# byte cut off, an item index or kind byte out of range; see test_truncated_payload_...).
DECODE_ERRORS = ValueError  # decode_state wraps every decoding failure in ValueError


# ---------------------------------------------------------------- strategies

EDGE_FLOATS = [
    0.0,
    -0.0,
    5e-324,  # the smallest subnormal
    -5e-324,
    2.2250738585072014e-308,  # the smallest normal
    1e-300,
    1e300,
    -1e300,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    float("inf"),
    float("-inf"),
    1.0,
    0.1,
]
floats = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(allow_nan=False))
timestamps = st.one_of(
    st.sampled_from([0.0, -0.0, -1e12, 1e12, 4e9, -62135596800.0, 253402300799.0, 1e300]),
    st.floats(allow_nan=False, allow_infinity=False),
)
utf8_text = st.text(alphabet=st.characters(codec="utf-8"))
EDGE_ITEM_IDS = [
    "",
    "x" * 255,
    "é" * 127 + "a",  # 255 bytes
    "日" * 85,  # 255 bytes
    "😀" * 63 + "abc",  # 255 bytes
    "a|b|c",
    "\x00",
]


def _fit_255(s: str) -> str:
    while len(s.encode()) > 255:
        s = s[:-1]
    return s


item_ids = st.one_of(
    st.sampled_from(EDGE_ITEM_IDS), st.text(alphabet=st.characters(codec="utf-8"), max_size=90)
).map(_fit_255)
user_ids = st.one_of(
    st.sampled_from(["u", "user-ü", "日本のユーザー", "😀" * 64, "x" * 1024]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
)


@st.composite
def item_stats(draw) -> ItemStat:
    bought = draw(st.booleans())
    return ItemStat(
        vw=draw(floats),
        # the layout keeps rep only for bought items; fold never counts rep without a purchase
        rep=draw(floats) if bought else 0.0,
        bought_ts=draw(timestamps) if bought else None,
        touched_ts=draw(timestamps),
    )


@st.composite
def states(draw, max_items: int = 25, max_history: int = 60, max_partitions: int = 40):
    items = draw(st.dictionaries(item_ids, item_stats(), max_size=max_items))
    # a history entry names an item still in the state (stored as its index) or one forgotten
    # since (stored inline)
    names = st.one_of(st.sampled_from(sorted(items)), item_ids) if items else item_ids
    history = [
        HistoryEntry(item_id, kind, ts, h)
        for item_id, kind, ts, h in draw(
            st.lists(
                st.tuples(
                    names,
                    st.sampled_from(KINDS),
                    timestamps,
                    st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)),
                ),
                max_size=max_history,
            )
        )
    ]
    offsets = draw(
        st.dictionaries(
            st.one_of(st.sampled_from([0, 1, 255, 256, 65535]), st.integers(0, 65535)),
            st.one_of(
                st.sampled_from([-1, 0, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1)
            ),
            max_size=max_partitions,
        )
    )
    sources = draw(
        st.dictionaries(
            st.tuples(st.integers(0, 255), st.integers(0, 65535)),
            st.integers(-(2**63), 2**63 - 1),
            max_size=max_partitions,
        )
    )
    last_list = draw(
        st.one_of(
            st.none(),
            st.builds(
                LastList,
                st.text(max_size=10).filter(lambda v: len(v.encode()) <= 32),
                st.sampled_from(TRIGGERS),
                st.sampled_from(STRATEGIES),
                st.lists(st.integers(0, 2**32 - 1), max_size=255).map(tuple),
            ),
        )
    )
    return UserState(
        user_id=draw(user_ids),
        wsum=draw(floats),
        ref_ts=draw(timestamps),
        last_ts=draw(timestamps),
        n_events=draw(st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1))),
        items=items,
        history=history,
        offsets=offsets,
        sources=sources,
        last_list=last_list,
    )


# ---------------------------------------------------------------- round trip


@settings(**_SETTINGS)
@given(states())
@example(UserState("u"))  # empty history, no items, no offsets
@example(
    UserState(
        "ü",
        items={"kept": ItemStat(vw=-0.0, touched_ts=-1e300)},
        history=[HistoryEntry("gone", "purchase", 5e-324, 2**64 - 1)],
    )
)
def test_round_trip_is_exact(state: UserState):
    raw = state.to_bytes()
    back = UserState.from_bytes(raw)
    assert canon(back) == canon(state)
    assert back.to_bytes() == raw
    # what the rankers and dedupe read back is the same too
    assert back.purchased == state.purchased
    assert back.last_purchase.keys() == state.last_purchase.keys()
    for h in state.history:
        if h.event_hash:
            assert any(e.event_hash == h.event_hash for e in back.history)


@settings(**_SETTINGS)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "é", "日" * 85, "c" * 255]),
            st.sampled_from(KINDS),
            timestamps,
            st.text(max_size=8),
        ),
        max_size=30,
    ),
    st.integers(1, 5),
    st.integers(1, 10),
)
def test_round_trip_of_folded_states(events, max_seen, history_len):
    """States made by ``fold`` (rebases, evictions, inline history ids) round-trip too."""
    cfg = DecayConfig(half_life_s=3.0, kind_weights={"view": 0.3, "purchase": 1.0})
    s = UserState("user-ü")
    for n, (item_id, kind, ts, event_id) in enumerate(events):
        s.fold(
            item_id=item_id,
            kind=kind,
            ts=ts,
            config=cfg,
            max_seen=max_seen,
            history_len=history_len,
            partition=n % 3,
            offset=n,
            event_id=event_id,
        )
        back = UserState.from_bytes(s.to_bytes())
        assert canon(back) == canon(s)


def test_many_partitions_round_trip_and_the_count_limit():
    """The offsets count is one byte: 255 partitions round-trip; 256 are refused with a
    ValueError on encode (not a corrupt payload). A partition must fit in 16 bits."""
    s = UserState("u", offsets={p * 257: p - 128 for p in range(255)})
    assert canon(UserState.from_bytes(s.to_bytes())) == canon(s)
    s.offsets[65535] = 1
    with pytest.raises(ValueError):
        s.to_bytes()
    with pytest.raises(struct.error):
        UserState("u", offsets={65536: 0}).to_bytes()


def test_item_ids_up_to_the_event_schema_limit_round_trip():
    """Item ids are length-prefixed with 16 bits: 128 characters of 4-byte UTF-8 fit."""
    longest = "\U0001f600" * 128  # 512 UTF-8 bytes, the most Interaction.item_id allows
    state = UserState("u", items={longest: ItemStat(vw=1.0)})
    state.history.append(HistoryEntry("x" * 300, "view", 0.0))  # inline id (not in items)
    back = UserState.from_bytes(state.to_bytes())
    assert list(back.items) == [longest]
    assert back.history[0].item_id == "x" * 300


# ---------------------------------------------------------------- broken payloads


@settings(**_BROKEN)
@given(states(max_items=8, max_history=12, max_partitions=4), st.data())
def test_truncated_payload_is_refused(state: UserState, data):
    raw = state.to_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    with pytest.raises(DECODE_ERRORS):
        UserState.from_bytes(raw[:cut])


@settings(**_BROKEN)
@given(states(max_items=8, max_history=12, max_partitions=4), st.binary(min_size=1, max_size=9))
def test_trailing_bytes_are_refused(state: UserState, extra: bytes):
    with pytest.raises(ValueError, match="trailing bytes"):
        UserState.from_bytes(state.to_bytes() + extra)


def test_wrong_version_is_refused():
    raw = bytearray(UserState("u").to_bytes())
    for version in (0, 1, 2, 3, 5, 255):
        raw[0] = version
        with pytest.raises(ValueError, match="version"):
            UserState.from_bytes(bytes(raw))


def test_invalid_utf8_id_is_refused_with_a_value_error():
    raw = bytearray(UserState("u", items={"ab": ItemStat()}).to_bytes())
    at = raw.index(b"ab")
    raw[at] = 0xFF
    with pytest.raises(ValueError, match="corrupt user state"):
        UserState.from_bytes(bytes(raw))


@settings(**_BROKEN)
@given(
    states(max_items=6, max_history=8, max_partitions=3),
    st.data(),
)
def test_corrupted_byte_never_crashes_otherwise(state: UserState, data):
    """Overwriting one byte either raises one of DECODE_ERRORS or decodes to some state (the
    layout has no checksum: a flipped bit in a float, hash or offset is not detectable)."""
    raw = bytearray(state.to_bytes())
    at = data.draw(st.integers(0, len(raw) - 1), label="at")
    raw[at] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]), label="byte")
    try:
        back = UserState.from_bytes(bytes(raw))
    except DECODE_ERRORS:
        return
    assert isinstance(back, UserState)


def _sample_state() -> UserState:
    cfg = DecayConfig(half_life_s=10.0, kind_weights={"view": 0.3, "purchase": 1.0})
    s = UserState("user-ü")
    for n in range(5):
        s.fold(
            item_id=f"i{n % 3}",
            kind="purchase" if n % 2 else "view",
            ts=float(n),
            config=cfg,
            partition=0,
            offset=n,
            event_id=f"e{n}",
            max_seen=2,  # i2 is forgotten: its history entry is stored inline
        )
    return s


def test_every_truncation_of_a_sample_state_is_refused():
    raw = _sample_state().to_bytes()
    for cut in range(len(raw)):
        with pytest.raises(DECODE_ERRORS):
            UserState.from_bytes(raw[:cut])


def test_truncated_payload_raises_value_error():
    raw = _sample_state().to_bytes()
    for cut in range(len(raw)):
        with pytest.raises(ValueError):
            UserState.from_bytes(raw[:cut])
