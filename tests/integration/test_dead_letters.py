"""Hostile input through the running worker: every bad record lands in dead-letters with its
reason and original bytes; the good records around it are processed; the worker keeps going."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streams.settings import REPO_ROOT, Settings, isolated_run
from vrec_tools.harness import Pipeline
from vrec_tools.replay import read_hm_items

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"
MAX_IMAGE_BYTES = 150_000

pytestmark = pytest.mark.timeout(600)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A tiny PNG whose header claims 60000 x 60000 pixels."""
    data = _png(Image.new("RGB", (1, 1)))
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", 60_000, 60_000)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return data[:16] + bytes(ihdr) + crc + data[33:]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _product(item_id: str, **kw) -> bytes:
    return json.dumps({"item_id": item_id, "title": "t", **kw}).encode()


def hostile_products(real: list, tmp: Path) -> tuple[list[tuple[bytes, str]], list[bytes]]:
    """(bad record, expected words in the reason) and good records, to interleave."""
    jpeg = Path(real[0].image_path).read_bytes()
    noise = np.random.default_rng(0).integers(0, 255, (260, 260, 3), dtype=np.uint8)
    big_png = _png(Image.fromarray(noise))
    assert len(big_png) > MAX_IMAGE_BYTES
    text = tmp / "notes.txt"
    text.write_text("not an image\n" * 50)
    bad = [
        (b"{not json", "invalid"),
        (b"[1, 2, 3]", "invalid"),
        (b"\xff\xfe\x00garbage", "invalid"),
        (json.dumps({"image_path": real[0].image_path}).encode(), "item_id"),
        (_product("no-image"), "image_path or image_b64"),
        # outside the image root: the same reason whether the file exists or not
        (_product("missing-file", image_path=str(tmp / "nope.jpg")), "inside the image root"),
        (_product("random-bytes", image_b64=_b64(np.random.bytes(3000))), "not a decodable image"),
        (_product("bad-b64", image_b64="%%%not base64%%%"), "base64"),
        (_product("truncated", image_b64=_b64(jpeg[: len(jpeg) // 2])), "truncated"),
        (_product("bomb", image_b64=_b64(_bomb())), "decompression bomb"),
        (_product("oversized", image_b64=_b64(big_png)), "too large"),
        (_product("text-file", image_path=str(text)), "inside the image root"),
    ]
    good = [p.to_bytes() for p in real[:4]]
    # one good product sent with its image as base64 bytes instead of a path
    p = real[4]
    good.append(_product(p.item_id + "-b64", image_b64=_b64(Path(p.image_path).read_bytes())))
    return bad, good


def hostile_events(
    items: list[str],
) -> tuple[list[tuple[str, bytes, str]], list[tuple[str, bytes]]]:
    ok = {"user_id": "u1", "item_id": items[0], "ts": 1_600_000_000}
    bad = [
        ("views", b"{oops", "invalid"),
        ("views", b"null", "JSON object"),
        ("views", b"\x80\x81\x82", "invalid"),
        (
            "purchases",
            json.dumps({**ok, "event_id": "e-nouser", "user_id": None}).encode(),
            "user_id",
        ),
        (
            "purchases",
            json.dumps({"event_id": "e-noitem", "user_id": "u1", "ts": 1}).encode(),
            "item_id",
        ),
        ("views", json.dumps({**ok, "event_id": "e-ts", "ts": "yesterday"}).encode(), "ts"),
        ("views", json.dumps({**ok, "event_id": "e-empty", "item_id": ""}).encode(), "item_id"),
        (
            "purchases",
            json.dumps({**ok, "event_id": "e-unknown", "item_id": "no-such-item"}).encode(),
            "unknown item_id",
        ),
        ("views", json.dumps({**ok, "event_id": "e-kind", "kind": "like"}).encode(), "kind"),
    ]
    good = [
        (
            "views" if i % 2 else "purchases",
            json.dumps(
                {
                    "event_id": f"g{i}",
                    "user_id": f"u{i % 3}",
                    "item_id": items[i % len(items)],
                    "ts": 1_600_000_000 + i * 60,
                }
            ).encode(),
        )
        for i in range(12)
    ]
    return bad, good


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "embedding-cache"])
def test_bad_input_goes_to_dead_letters_and_nothing_is_lost(kafka_broker, tmp_path, cache):
    settings = isolated_run(
        Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path),
        "dl",
        max_image_bytes=MAX_IMAGE_BYTES,
        encoder_batch=4,
        embedding_cache=str(tmp_path / "emb.sqlite") if cache else "",
        batch_max=1,  # one list per event: every good event is matched to its own list
    )
    real = read_hm_items(SAMPLE / "items.csv", limit=5)
    bad_products, good_products = hostile_products(real, tmp_path)
    with Pipeline(settings) as pipe:
        r = pipe.replayer
        assert r is not None
        # interleave: bad, good, bad, good, ...
        order = []
        for i in range(max(len(bad_products), len(good_products))):
            if i < len(bad_products):
                order.append(bad_products[i][0])
            if i < len(good_products):
                order.append(good_products[i])
        for value in order:
            r.send_raw("products", value)
        r.producer.flush()
        n_products = len(bad_products) + len(good_products)
        pipe.wait_until(
            "products embedded or dead-lettered",
            lambda: pipe.count("item_embeddings") + pipe.count("dead_letters") >= n_products,
            timeout=300,
        )
        embedded = pipe.embeddings()
        assert set(embedded) == {p.item_id for p in real[:4]} | {real[4].item_id + "-b64"}
        letters = pipe.dead_letters()
        assert len(letters) == len(bad_products)
        by_value = {dl.value: dl for dl in letters}
        for value, words in bad_products:
            assert value in by_value, f"lost: {value[:60]!r}"
            dl = by_value[value]
            assert words.lower() in dl.reason.lower(), (words, dl.reason)
            assert dl.topic == settings.topics.full("products")
            assert dl.stage == "encode" and dl.offset is not None

        items = sorted(embedded)
        bad_events, good_events = hostile_events(items)
        sequence = []
        for i in range(max(len(bad_events), len(good_events))):
            if i < len(bad_events):
                sequence.append(bad_events[i][:2])
            if i < len(good_events):
                sequence.append(good_events[i])
        for topic, value in sequence:
            r.send_raw(topic, value)
        r.producer.flush()
        pipe.wait_until(
            "events processed or dead-lettered",
            lambda: (
                pipe.count("recommendations") + pipe.count("dead_letters")
                >= len(good_events) + len(bad_events) + len(bad_products)
            ),
            timeout=300,
        )
        recs = pipe.recommendations()
        assert sorted(r.event_id for r in recs) == sorted(f"g{i}" for i in range(12))
        letters = pipe.dead_letters()[len(bad_products) :]
        assert len(letters) == len(bad_events)
        by_value = {dl.value: dl for dl in letters}
        for topic, value, words in bad_events:
            dl = by_value[value]
            assert words.lower() in dl.reason.lower(), (words, dl.reason)
            assert dl.topic == settings.topics.full(topic)
        assert pipe.worker.alive
    if cache:  # the good images were cached under the model id, the bad ones not
        from encoders.cache import EmbeddingCache

        with EmbeddingCache(tmp_path / "emb.sqlite") as c:
            assert c.count(recs[0].model_id) == len(good_products)
