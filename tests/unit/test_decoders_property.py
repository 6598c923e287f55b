"""Property tests over every decoder of untrusted input, called as the agents call them.

Each must give a usable result or raise an error the agent turns into a dead letter with a
reason (the exception types its ``except`` clause catches); never anything else, since any
other exception out of an agent loses the record. Results must survive what the agent does
next with them (encode the key, serialise, store the payload).
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from encoders.preprocess import ImageError, load_image, preprocess
from streams.agents.encode import decode_product, resolve_image
from streams.agents.ingest import parse_input
from streams.agents.replica import decode_item
from streams.catalogue import Catalogue
from streams.deadletters import bound_letter, describe
from streams.events import Interaction, ItemEmbedding, ProductUpload, Tick, encode_vector
from streams.userbatch import parse_user_event
from vrec_tools.replay import read_hm_events, read_hm_items, read_jsonl

FAST = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
INGEST_CATCHES = (ValidationError, ValueError, UnicodeDecodeError)  # ingest.py's except
DIMS = {"image": 4, "text": 3}

# ------------------------------------------------------------------ hostile JSON records

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**400, -(10**400), 2**63, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "tick", "view", "purchase", "2024-01-02", "2024-01-02T03:04:05Z",
                     "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1e400", "NaN",
                     "\ud800", "x" * 300, "AAAAAAA=", "%%%", encode_vector(np.ones(4))]),
)  # fmt: skip
_json = st.recursive(
    _scalars,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "event_id", "user_id", "item_id", "ts", "kind", "channel", "image_path", "image_b64",
    "title", "category", "description", "product_code", "price", "model_id", "vector_b64",
    "text_vector_b64", "payload", "source",
]  # fmt: skip


@st.composite
def records(draw) -> bytes | None:
    """Bytes a client could put on a topic: random bytes, or JSON objects with the schemas'
    field names and hostile values (NaN, Infinity, huge ints, surrogates), possibly cut."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=60))
    doc = draw(st.dictionaries(st.sampled_from(FIELDS), _json, max_size=8))
    text = json.dumps(doc, allow_nan=True)  # NaN / Infinity tokens, \ud800 escapes
    raw = text.encode()
    cut = draw(st.integers(0, 12))
    return raw[: len(raw) - cut] if cut < 3 else raw


@st.composite
def valid_events(draw) -> bytes:
    doc = {
        "event_id": draw(st.text(min_size=1, max_size=10)),
        "user_id": draw(st.text(min_size=1, max_size=10)),
        "item_id": draw(st.text(min_size=1, max_size=10)),
        "ts": draw(st.floats(0, 2e9) | st.integers(0, 2 * 10**9)),
    }
    return json.dumps(doc).encode()


def _usable_interaction(event: Interaction | Tick) -> None:
    """What the ingest and users agents do with a parsed record must not raise."""
    assert isinstance(event, (Interaction, Tick)) and math.isfinite(event.ts)
    Type = type(event)
    assert Type.from_bytes(event.to_bytes()) == event
    if isinstance(event, Interaction):
        event.user_id.encode()
        event.item_id.encode()


@FAST
@given(records() | valid_events(), st.sampled_from(["view", "purchase"]))
@example(b'{"event_id": "e", "user_id": "u", "item_id": "i", "ts": 1' + b"0" * 400 + b"}", "view")
@example(b'{"event_id": "e", "user_id": "u", "item_id": "i", "ts": Infinity}', "view")
@example(b'{"kind": "tick", "ts": "0001-01-01T00:00:00+14:00"}', "view")
def test_ingest_parse_input(raw: bytes, kind: str) -> None:
    try:
        event = parse_input(raw, kind)
    except INGEST_CATCHES as exc:
        assert describe(exc)
        return
    _usable_interaction(event)


@FAST
@given(records() | valid_events())
@example(b'{"event_id": "e", "user_id": "u", "item_id": "i", "ts": 1' + b"0" * 400 + b"}")
def test_users_parse_user_event(raw: bytes) -> None:
    try:
        event = parse_user_event(raw)
    except ValueError:  # fold_batch's except
        return
    _usable_interaction(event)


@pytest.mark.parametrize("raw", [None, b"[" * 100_000], ids=["tombstone", "deep-nesting"])
@pytest.mark.parametrize("parse", ["ingest", "users"])
def test_agent_parsers_refuse_tombstones_and_deep_nesting(raw, parse: str) -> None:
    with pytest.raises(ValueError):
        parse_input(raw, "view") if parse == "ingest" else parse_user_event(raw)


@FAST
@given(records())
@example(None)
@example(b"[" * 100_000)
@example(b'{"item_id": "a", "image_path": "x", "price": Infinity}')
@example(b'{"item_id": "a", "image_b64": "%%%"}')
def test_encode_decode_product(raw: bytes | None) -> None:
    try:
        product = decode_product(raw)
        if product.image_b64:
            assert isinstance(resolve_image(product, None), bytes)
    except ValueError as exc:  # the encode agent's except
        assert describe(exc)
        return
    assert isinstance(product, ProductUpload)
    json.dumps(product.payload(), allow_nan=False)  # the store and item-embeddings take it
    assert ProductUpload.from_bytes(product.to_bytes()).item_id == product.item_id
    product.item_id.encode()


@st.composite
def embedding_records(draw) -> bytes | None:
    if draw(st.booleans()):
        return draw(records())
    dim = draw(st.sampled_from([3, 4, 5]))
    vec = draw(st.lists(st.floats(width=32), min_size=dim, max_size=dim))
    doc = {
        "item_id": draw(st.text(max_size=5)),
        "model_id": "m",
        "vector_b64": encode_vector(np.array(vec, np.float32)),
        "payload": draw(st.dictionaries(st.sampled_from(["price", "product_code", "x"]), _json)),
    }
    if draw(st.booleans()):
        doc["text_vector_b64"] = encode_vector(np.ones(draw(st.sampled_from([2, 3])), np.float32))
    return json.dumps(doc, allow_nan=True).encode()


@FAST
@given(embedding_records())
@example(None)
@example(b"[" * 100_000)
@example(  # found by hypothesis: an integer price past the float range
    b'{"item_id": "i", "model_id": "m", "vector_b64": "AAAAAAAAAAAAAAAA", "payload": {"price": '
    + b"1" * 400
    + b"}}"
)
def test_replica_decode_item(raw: bytes | None) -> None:
    try:
        emb, vectors = decode_item(raw, DIMS)
    except ValueError as exc:  # the replica's except: a dead letter
        assert str(exc)
        return
    assert isinstance(emb, ItemEmbedding)
    for name, vec in vectors.items():
        assert vec.shape == (DIMS[name],) and np.isfinite(vec).all()
    Catalogue(4).put(emb.item_id, vectors["image"], emb.payload)  # what rt.remember does
    json.dumps(emb.payload, allow_nan=False)  # the store's payload


@FAST
@given(st.one_of(st.none(), st.binary(max_size=3000)), st.binary(max_size=2000), st.text())
def test_every_dead_letter_fits(value: bytes | None, key: bytes, reason: str) -> None:
    limit = 64 * 1024
    letter, out_key = bound_letter(reason * 50, "t", (value or b"") * 40, key=key, max_bytes=limit)
    assert len(letter.to_bytes()) + len(out_key or b"") <= limit
    assert (value or b"") * 40 == letter.value or letter.truncated


# ------------------------------------------------------------------ replay files


def _lines(draw_lines: list[bytes]) -> bytes:
    return b"\n".join(draw_lines) + b"\n"


@settings(max_examples=150, deadline=None)
@given(st.lists(records().filter(lambda r: r is not None) | valid_events(), max_size=5))
def test_read_jsonl(tmp_path_factory, lines: list[bytes]) -> None:
    path = tmp_path_factory.mktemp("jsonl") / "log.jsonl"
    path.write_bytes(_lines([line.replace(b"\n", b" ") for line in lines]))
    try:
        products, events = read_jsonl(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert all(isinstance(p, ProductUpload) for p in products)
    assert [e.ts for e in events] == sorted(e.ts for e in events)


_cells = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["2020-09-01", "2020-13-01", "x", "1", "2", "", "purchase", "view"]),
)
HM_EVENT_COLUMNS = ["t_dat", "customer_id", "article_id", "src_row", "event_type",
                    "sales_channel_id"]  # fmt: skip
HM_ITEM_COLUMNS = ["article_id", "image_path", "prod_name", "product_type_name", "product_code"]


@st.composite
def csv_bytes(draw, columns: list[str]) -> bytes:
    header = draw(st.lists(st.sampled_from(columns), min_size=1, unique=True))
    if draw(st.booleans()):
        header = columns
    rows = draw(st.lists(st.lists(_cells, max_size=len(header) + 1), max_size=4))
    buf = io.StringIO()
    import csv

    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    raw = buf.getvalue().encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 5)) == 0:
        raw += draw(st.binary(max_size=20))
    return raw


@settings(max_examples=150, deadline=None)
@given(csv_bytes(HM_EVENT_COLUMNS))
def test_read_hm_events(tmp_path_factory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("hm") / "events.csv"
    path.write_bytes(raw)
    try:
        events = read_hm_events(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    for e in events:
        _usable_interaction(e)


@settings(max_examples=150, deadline=None)
@given(csv_bytes(HM_ITEM_COLUMNS))
def test_read_hm_items(tmp_path_factory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("hm") / "items.csv"
    path.write_bytes(raw)
    try:
        items = read_hm_items(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    for p in items:
        assert ProductUpload.from_bytes(p.to_bytes()) == p


# ------------------------------------------------------------------ images


def _encoded(fmt: str, size: tuple[int, int], mode: str) -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, size, 7)
    img.save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [
    _encoded(fmt, size, mode)
    for fmt, mode in [("PNG", "RGBA"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "L"),
                      ("TIFF", "I;16"), ("WEBP", "RGB")]
    for size in [(1, 1), (5, 3)]
]  # fmt: skip


@st.composite
def image_bytes(draw) -> bytes:
    """Valid small images of several formats, cut, with bytes overwritten, or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


@settings(max_examples=300, deadline=None)
@given(image_bytes())
def test_load_image(data: bytes) -> None:
    try:
        img = load_image(data, max_bytes=10_000, max_pixels=100_000)
    except ImageError as exc:  # the encode agent's except: a dead letter with the reason
        assert str(exc)
        return
    assert img.mode == "RGB" and img.width > 0 and img.height > 0
    batch = preprocess([img], size=8)
    assert batch.shape == (1, 3, 8, 8) and np.isfinite(batch).all()
