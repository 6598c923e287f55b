"""Issue 12 items 2 and 4 without Kafka: bounded dead letters, decode errors of every kind as
a clear ValueError, non-finite prices refused, bad embedding records refused by the replica."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from streams.agents.replica import decode_item
from streams.deadletters import (
    MAX_DEAD_LETTER_BYTES,
    MIN_DEAD_LETTER_BYTES,
    DeadLetterSink,
    bound_letter,
)
from streams.events import (
    DeadLetter,
    Interaction,
    ItemEmbedding,
    ProductUpload,
    encode_vector,
    json_object,
    to_epoch,
)

PRODUCER_LIMIT = 1_000_000  # faust's producer_max_request_size default (aiokafka's ~1 MiB)


@dataclass
class FakeTopic:
    sent: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    async def send(self, *, key: bytes | None, value: bytes) -> None:
        self.sent.append((key, value))


def _send(value: bytes | None, key: bytes | None = None, reason: str = "bad") -> tuple:
    topic = FakeTopic()
    sink = DeadLetterSink(topic)  # type: ignore[arg-type]
    asyncio.run(sink.send(reason, value, topic="views", key=key, stage="ingest"))
    assert sink.count == 1 and len(topic.sent) == 1
    return topic.sent[0]


# ------------------------------------------------------------ dead letters are bounded


def test_small_dead_letter_keeps_the_whole_original() -> None:
    key, value = _send(b'{"oops', key=b"u1")
    dl = DeadLetter.from_bytes(value)
    assert dl.value == b'{"oops' and key == b"u1" and dl.key == "u1"
    assert dl.value_size == 6 and not dl.truncated
    assert dl.value_sha256 == hashlib.sha256(b'{"oops').hexdigest()


@pytest.mark.parametrize(
    "original",
    [
        # a 1 MB user_id (the record's key is that user_id too)
        json.dumps({"event_id": "e", "user_id": "u" * 1_000_000, "item_id": "i", "ts": 1}),
        # a 700 KB image_b64 that is not base64
        json.dumps({"item_id": "x", "image_b64": "%" * 700_000}),
    ],
    ids=["1MB-user_id", "700KB-bad-base64"],
)
def test_large_original_is_truncated_with_size_and_hash(original: str) -> None:
    raw = original.encode()
    big_key = b"u" * 1_000_000 if "user_id" in original else None
    key, value = _send(raw, key=big_key, reason="r" * 2_000_000)
    assert len(value) + len(key or b"") <= MAX_DEAD_LETTER_BYTES < PRODUCER_LIMIT
    dl = DeadLetter.from_bytes(value)
    assert dl.truncated and dl.value_size == len(raw)
    assert dl.value_sha256 == hashlib.sha256(raw).hexdigest()
    assert raw.startswith(dl.value) and len(dl.value) > 1000  # a useful prefix is kept
    assert dl.reason.startswith("rrrr") and len(dl.reason) < 10_000
    if big_key is not None:
        assert dl.key_size == len(big_key) and big_key.startswith(key)
        assert dl.key_sha256 == hashlib.sha256(big_key).hexdigest()


@pytest.mark.parametrize("limit", [MIN_DEAD_LETTER_BYTES, 100_000, MAX_DEAD_LETTER_BYTES])
@pytest.mark.parametrize("filler", ["\x00", "\u20ac", "y"], ids=["escaped", "3-byte", "ascii"])
def test_bound_letter_is_never_over_the_limit(limit: int, filler: str) -> None:
    original = filler.encode() * 500_000
    letter, key = bound_letter(
        filler * 100_000,
        filler * 1_000,
        original,
        key=filler.encode() * 50_000,
        stage=filler * 1000,
        max_bytes=limit,
    )
    assert len(letter.to_bytes()) + len(key or b"") <= limit
    assert original.startswith(letter.value) and len(letter.value) > 1000
    assert letter.truncated == (
        len(letter.value) < len(original)
    ) and letter.value_size == 500_000 * len(filler.encode())


def test_bound_letter_refuses_a_limit_it_cannot_keep() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        bound_letter("r", "t", b"v", max_bytes=MIN_DEAD_LETTER_BYTES - 1)


# ------------------------------------------------------------ decode errors of every kind


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (None, "tombstone"),
        (b"", "empty"),
        (b"\xff\xfe", "utf-8"),
        (b"{oops", "invalid json"),
        (b"[1]", "json object"),
        (b'{"a": NaN}', "non-finite"),
        (b'{"a": -Infinity}', "non-finite"),
        (b'{"a": 1e400}', "non-finite"),
        (b"[" * 100_000, "nested"),
        (12, "bytes"),
    ],
)
def test_json_object_raises_a_clear_value_error(raw, words: str) -> None:
    with pytest.raises(ValueError) as err:
        json_object(raw)
    assert words in str(err.value).lower()


def test_huge_integer_timestamp_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ts"):
        to_epoch(10**400)
    with pytest.raises(ValueError):
        Interaction.model_validate({"event_id": "e", "user_id": "u", "item_id": "i", "ts": 10**400})


@pytest.mark.parametrize("price", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_price_is_refused_by_the_schema(price: str) -> None:
    raw = b'{"item_id": "a", "image_path": "x.jpg", "price": %s}' % price.encode()
    with pytest.raises(ValueError, match="price"):
        ProductUpload.from_bytes(raw)
    assert (
        ProductUpload.from_bytes(b'{"item_id": "a", "image_path": "x", "price": 9.5}').price == 9.5
    )


# ------------------------------------------------------------ replica decode


def _emb(vec: np.ndarray, **kw) -> bytes:
    doc = {"item_id": "i1", "model_id": "m", "vector_b64": encode_vector(vec), **kw}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (_emb(np.ones(3, np.float32)), "3 dims"),
        (_emb(np.array([1, np.nan, 0, 0], np.float32)), "finite"),
        (_emb(np.ones(4), text_vector_b64=encode_vector(np.ones(2))), "text"),
        (json.dumps({"item_id": "i", "model_id": "m", "vector_b64": "%%%"}).encode(), "base64"),
        (
            json.dumps({"item_id": "i", "model_id": "m", "vector_b64": "AAAAAAA="}).encode(),
            "multiple of 4",
        ),
        (b"{oops", "invalid"),
        (b"[]", "object"),
    ],
)
def test_replica_refuses_bad_embedding_records(raw: bytes, words: str) -> None:
    with pytest.raises(ValueError) as err:
        decode_item(raw, {"image": 4, "text": 4})
    assert words in str(err.value).lower()


def test_replica_decodes_a_good_record() -> None:
    vec = np.arange(4, dtype=np.float32)
    emb, vectors = decode_item(_emb(vec, text_vector_b64=encode_vector(vec)), {"image": 4})
    assert isinstance(emb, ItemEmbedding) and emb.item_id == "i1"
    assert set(vectors) == {"image"} and np.array_equal(vectors["image"], vec)
    _, both = decode_item(_emb(vec, text_vector_b64=encode_vector(vec)), {"image": 4, "text": 4})
    assert set(both) == {"image", "text"}
    assert base64.b64decode(encode_vector(vec))  # sanity
