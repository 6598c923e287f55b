"""streams.events, ingest parsing, dead letters, image resolution and the settings round trip."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from streams.agents.encode import resolve_image
from streams.agents.ingest import parse_input, parse_interaction
from streams.deadletters import describe
from streams.events import (
    DeadLetter,
    Interaction,
    ItemEmbedding,
    ProductUpload,
    Recommendation,
    Tick,
    decode_vector,
    encode_vector,
    to_epoch,
)
from streams.settings import Settings
from vrec_tools.harness import settings_env

# 2024-01-02T03:04:05Z = 1704153600 (2024-01-02 00:00 UTC) + 3*3600 + 4*60 + 5
T_2024_01_02 = 1_704_153_600.0
T_2024_01_02_030405 = T_2024_01_02 + 3 * 3600 + 4 * 60 + 5

# ---------------------------------------------------------------- to_epoch


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000.25, 1_700_000_000.25),
        (-5, -5.0),
        ("1700000000", 1_700_000_000.0),
        ("1700000000.5", 1_700_000_000.5),
        (" 42 ", 42.0),
        ("2024-01-02", T_2024_01_02),
        ("2024-01-02T03:04:05", T_2024_01_02_030405),  # naive: taken as UTC
        ("2024-01-02T03:04:05Z", T_2024_01_02_030405),
        ("2024-01-02T03:04:05+00:00", T_2024_01_02_030405),
        ("2024-01-02T03:04:05+02:00", T_2024_01_02_030405 - 7200),
        ("2024-01-02T03:04:05.5-01:30", T_2024_01_02_030405 + 5400 + 0.5),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), T_2024_01_02_030405),
    ],
)
def test_to_epoch_accepts(value, expected):
    got = to_epoch(value)
    assert isinstance(got, float)
    assert got == expected


@pytest.mark.parametrize("value", [True, False])
def test_to_epoch_rejects_bool(value):
    with pytest.raises(ValueError):
        to_epoch(value)


@pytest.mark.parametrize("value", [None, [1], {"t": 1}, "yesterday", "", "2024-13-45"])
def test_to_epoch_rejects_other_values(value):
    with pytest.raises(ValueError):
        to_epoch(value)


# ---------------------------------------------------------------- ProductUpload


def test_product_upload_needs_an_image():
    with pytest.raises(ValidationError, match="image_path or image_b64"):
        ProductUpload(item_id="x")
    with pytest.raises(ValidationError, match="image_path or image_b64"):
        ProductUpload(item_id="x", image_path="", image_b64="")
    assert ProductUpload(item_id="x", image_path="a.jpg").image_path == "a.jpg"
    assert ProductUpload(item_id="x", image_b64="AAAA").image_b64 == "AAAA"
    url = "https://cdn.example.com/a.jpg"
    assert ProductUpload(item_id="x", image_url=url).image_url == url


@pytest.mark.parametrize(
    "images",
    [
        {"image_path": "a.jpg", "image_b64": "AAAA"},
        {"image_path": "a.jpg", "image_url": "http://example.com/a.jpg"},
        {"image_b64": "AAAA", "image_url": "http://example.com/a.jpg"},
        {"image_path": "a.jpg", "image_b64": "AAAA", "image_url": "http://example.com/a.jpg"},
    ],
)
def test_product_upload_takes_exactly_one_image(images: dict) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ProductUpload(item_id="x", **images)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "example.com/a.jpg",
        "http://",
        "https://" + "a" * 2100 + ".com/",
    ],
)
def test_product_upload_image_url_is_http_or_https(url: str) -> None:
    with pytest.raises(ValidationError, match="image_url must be an http"):
        ProductUpload(item_id="x", image_url=url)


def test_resolve_image_leaves_urls_to_the_fetcher() -> None:
    p = ProductUpload(item_id="x", image_url="http://example.com/a.jpg")
    with pytest.raises(ValueError, match="image_url"):
        resolve_image(p, None)
    assert p.payload()["image_url"] == "http://example.com/a.jpg"


def test_product_upload_validation_and_payload():
    with pytest.raises(ValidationError):
        ProductUpload(item_id="", image_path="a.jpg")
    p = ProductUpload.from_bytes(
        b'{"item_id":"x","image_path":"a.jpg","price":9.5,"ts":"2024-01-02","unknown":1}'
    )
    assert p.ts == T_2024_01_02
    assert p.payload() == {"item_id": "x", "title": "", "price": 9.5, "image_path": "a.jpg"}
    assert ProductUpload.from_bytes(p.to_bytes()) == p


# ---------------------------------------------------------------- Interaction


GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1_700_000_000}


def test_interaction_valid_and_round_trip():
    ev = Interaction(**GOOD)
    assert ev.kind == "view"
    assert ev.ts == 1_700_000_000.0
    assert Interaction.from_bytes(ev.to_bytes()) == ev
    assert Interaction(**{**GOOD, "ts": "2024-01-02T03:04:05Z"}).ts == T_2024_01_02_030405


@pytest.mark.parametrize("missing", ["event_id", "user_id", "item_id", "ts"])
def test_interaction_missing_field(missing):
    doc = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ValidationError) as info:
        Interaction(**doc)
    assert [e["loc"] for e in info.value.errors()] == [(missing,)]


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id"])
def test_interaction_empty_ids_rejected(field):
    with pytest.raises(ValidationError) as info:
        Interaction(**{**GOOD, field: ""})
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("ts", ["yesterday", True, None, [1], "2024-02-30"])
def test_interaction_bad_ts_rejected(ts):
    with pytest.raises(ValidationError) as info:
        Interaction(**{**GOOD, "ts": ts})
    assert info.value.errors()[0]["loc"] == ("ts",)


def test_interaction_bad_kind_and_long_ids_rejected():
    with pytest.raises(ValidationError):
        Interaction(**{**GOOD, "kind": "click"})
    with pytest.raises(ValidationError):
        Interaction(**{**GOOD, "item_id": "x" * 129})
    assert Interaction(**{**GOOD, "item_id": "x" * 128}).item_id == "x" * 128


# ---------------------------------------------------------------- parse_interaction


def _raw(doc) -> bytes:
    return json.dumps(doc).encode()


def test_parse_interaction_kind_from_topic_unless_given():
    assert parse_interaction(_raw(GOOD), "view").kind == "view"
    assert parse_interaction(_raw(GOOD), "purchase").kind == "purchase"
    assert parse_interaction(_raw({**GOOD, "kind": "view"}), "purchase").kind == "view"
    assert parse_interaction(_raw({**GOOD, "kind": "purchase"}), "view").kind == "purchase"
    ev = parse_interaction(_raw({**GOOD, "extra": "ignored"}), "view")
    assert (ev.event_id, ev.user_id, ev.item_id, ev.ts) == ("e1", "u1", "i1", 1_700_000_000.0)


def test_parse_input_reads_clock_marks_apart_from_interactions():
    tick = parse_input(_raw({"kind": "tick", "ts": "2020-09-17"}), "purchase")
    assert isinstance(tick, Tick) and tick.ts == 1_600_300_800.0
    assert Tick.model_validate_json(tick.to_bytes()) == tick
    assert isinstance(parse_input(_raw(GOOD), "purchase"), Interaction)
    with pytest.raises(ValidationError):
        parse_input(_raw({"kind": "tick"}), "view")  # a mark needs its time
    with pytest.raises(ValidationError):
        parse_input(_raw({"kind": "tick", "ts": "never"}), "view")
    with pytest.raises(ValueError, match="clock mark"):
        parse_interaction(_raw({"kind": "tick", "ts": 5}), "view")


def test_recommendation_trigger_defaults_to_event_and_round_trips():
    rec = Recommendation(user_id="u", items=[], model_id="m")
    assert rec.trigger == "event"
    closed = rec.model_copy(update={"trigger": "day_close"})
    assert Recommendation.from_bytes(closed.to_bytes()).trigger == "day_close"
    with pytest.raises(ValidationError):
        Recommendation(user_id="u", items=[], model_id="m", trigger="cron")


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_parse_interaction_rejects_non_objects(raw):
    with pytest.raises(ValueError, match="JSON object"):
        parse_interaction(raw, "view")


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"a": 1', b"\xff\xfe"])
def test_parse_interaction_rejects_malformed_json(raw):
    # JSONDecodeError and UnicodeDecodeError are both ValueErrors: the agent dead-letters them
    with pytest.raises(ValueError):
        parse_interaction(raw, "view")


def test_parse_interaction_invalid_record_is_validation_error():
    with pytest.raises(ValidationError):
        parse_interaction(_raw({**GOOD, "user_id": ""}), "view")
    with pytest.raises(ValidationError):
        parse_interaction(_raw({**GOOD, "kind": "click"}), "view")


# ---------------------------------------------------------------- vectors


def test_vector_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    v = rng.normal(size=1280).astype(np.float32)
    text = encode_vector(v)
    assert isinstance(text, str)
    assert len(base64.b64decode(text)) == 1280 * 4
    back = decode_vector(text)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, v)
    back[0] = 123.0  # a writable copy
    # float64 input is stored as float32
    v64 = rng.normal(size=7)
    np.testing.assert_array_equal(decode_vector(encode_vector(v64)), v64.astype(np.float32))
    # little-endian on the wire
    assert base64.b64decode(encode_vector(np.array([1.0], dtype=np.float32))) == b"\x00\x00\x80\x3f"


def test_item_embedding_vector_property():
    v = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    e = ItemEmbedding(item_id="x", model_id="m", vector_b64=encode_vector(v))
    np.testing.assert_array_equal(ItemEmbedding.from_bytes(e.to_bytes()).vector, v)


# ---------------------------------------------------------------- dead letters


def test_dead_letter_keeps_original_bytes():
    original = b"\xff\x00not utf-8 \x80{"
    d = DeadLetter.of("bad", "views", original, partition=2, offset=17, key="u1", stage="ingest")
    assert d.value == original
    back = DeadLetter.from_bytes(d.to_bytes())
    assert back.value == original
    assert (back.reason, back.topic, back.partition, back.offset, back.key, back.stage) == (
        "bad",
        "views",
        2,
        17,
        "u1",
        "ingest",
    )
    assert DeadLetter.of("empty", "views", None).value == b""


def test_describe_validation_error_is_readable():
    with pytest.raises(ValidationError) as info:
        parse_interaction(_raw({**GOOD, "user_id": "", "ts": "yesterday"}), "view")
    text = describe(info.value)
    assert text.startswith("invalid record: ")
    assert "user_id: " in text
    assert "ts: " in text
    assert "; " in text
    assert "\n" not in text


def test_describe_missing_field_and_model_level_error():
    with pytest.raises(ValidationError) as info:
        Interaction(event_id="e", user_id="u", ts=1)
    assert describe(info.value).startswith("invalid record: item_id: Field required")
    with pytest.raises(ValidationError) as info:
        ProductUpload.from_bytes(b'{"item_id": "x"}')
    text = describe(info.value)
    assert text.startswith("invalid record: record: ")  # no location: the whole record
    assert "image_path or image_b64" in text


def test_describe_caps_at_five_errors():
    with pytest.raises(ValidationError) as info:
        ProductUpload.model_validate(
            {
                "item_id": "",
                "image_path": 1,
                "image_b64": 2,
                "title": 3,
                "category": 4,
                "price": "x",
            }
        )
    assert len(info.value.errors()) > 5
    assert describe(info.value).count("; ") == 4


def test_describe_decoding_and_other_errors():
    assert describe(ValueError("boom")) == "ValueError: boom"
    with pytest.raises(ValueError) as info:
        parse_interaction(b"{nope", "view")
    assert describe(info.value).startswith("invalid JSON: Expecting property name")
    with pytest.raises(ValueError) as info:
        parse_interaction(b'{"a": "\xff"}', "view")
    assert describe(info.value).startswith("invalid JSON: not UTF-8")
    assert describe(json.JSONDecodeError("bad", "x", 0)).startswith("invalid JSON: ")


# ---------------------------------------------------------------- resolve_image


def test_resolve_image_base64_valid():
    data = b"\x89PNG\r\n\x1a\n\x00binary"
    p = ProductUpload(item_id="x", image_b64=base64.b64encode(data).decode())
    assert resolve_image(p, None) == data
    assert resolve_image(p, [Path("/root")]) == data  # base64 needs no image root


@pytest.mark.parametrize("bad", ["not base64!!", "abc", "QUJD\nRA==x"])
def test_resolve_image_base64_invalid(bad):
    p = ProductUpload(item_id="x", image_b64=bad)
    with pytest.raises(ValueError, match="image_b64 is not valid base64"):
        resolve_image(p, None)


def test_resolve_image_paths(tmp_path):
    from encoders import ImageError

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"a")
    (tmp_path / "b.jpg").write_bytes(b"b")
    rel = ProductUpload(item_id="x", image_path="sub/a.jpg")
    assert resolve_image(rel, [tmp_path]) == b"a"  # relative: under the image root
    absolute = ProductUpload(item_id="x", image_path=str(tmp_path / "b.jpg"))
    assert resolve_image(absolute, [tmp_path]) == b"b"  # absolute inside the root
    for roots in (None, [tmp_path / "sub"], [Path("/elsewhere")]):  # outside: refused
        with pytest.raises(ImageError, match="inside the image root"):
            resolve_image(absolute, roots)


# ---------------------------------------------------------------- settings_env round trip


def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("VREC_"):
            monkeypatch.delenv(name)


def _round_trip(settings: Settings, monkeypatch) -> tuple[dict[str, str], Settings]:
    env = settings_env(settings)
    _clean_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env, Settings()


def test_settings_env_round_trip_defaults(monkeypatch):
    _clean_env(monkeypatch)
    original = Settings()
    env, back = _round_trip(original, monkeypatch)
    assert all(isinstance(v, str) for v in env.values())
    assert back.model_dump() == original.model_dump()


def test_settings_env_round_trip_non_defaults(monkeypatch, tmp_path):
    from streams.settings import TopicNames

    _clean_env(monkeypatch)
    original = Settings(
        broker="kafka://10.0.0.5:19092",
        partitions=4,
        table_store="memory://",
        processing_guarantee="exactly_once",
        web_enabled=True,
        data_dir=tmp_path / "data",
        store="qdrant-memory",
        device="cpu",
        image_root=tmp_path / "images",
        half_life_days=2.5,
        weight_view=0.1,
        weight_purchase=1.7,
        exclude="seen",
        top_k=7,
        personalise_after=3,
        trending_window_days=0.3,
        trending_bucket_s=600,
        topics=TopicNames(prefix="t1234.", views="clicks"),
    )
    env, back = _round_trip(original, monkeypatch)
    assert env["VREC_PARTITIONS"] == "4"
    assert env["VREC_TOPIC_PREFIX"] == "t1234."
    assert env["VREC_TOPIC_USER_EVENTS"] == "user-events"
    assert back.model_dump() == original.model_dump()
    assert back.topics.full("views") == "t1234.clicks"
    assert back.image_root == tmp_path / "images"
    assert back.web_enabled is True
    assert back.weight_view == 0.1


def test_settings_env_omits_none(monkeypatch):
    _clean_env(monkeypatch)
    env = settings_env(Settings(image_root=None))
    assert "VREC_IMAGE_ROOT" not in env
    assert "None" not in env.values()
