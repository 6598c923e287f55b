"""Issue 12 items 2 and 4 through a running worker: forged item-embeddings records, records
too large for a whole dead letter, non-finite numbers and tombstones all end in dead-letters;
the good records around them are processed and the worker keeps going (and restarts)."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest

from streams.events import ItemEmbedding, encode_vector
from streams.settings import REPO_ROOT, Settings, isolated_run
from vrec_tools.harness import Pipeline
from vrec_tools.replay import Replayer, read_hm_items

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"
PRODUCER_LIMIT = 1_000_000

pytestmark = pytest.mark.timeout(600)


def _forged_embeddings() -> list[tuple[bytes, bytes, str]]:
    """(key, value, words in the reason) of item-embeddings records no encoder wrote."""

    def emb(item_id: str, vec: np.ndarray) -> bytes:
        doc = {"item_id": item_id, "model_id": "forged", "vector_b64": encode_vector(vec)}
        return json.dumps(doc).encode()

    return [
        (b"forged-3d", emb("forged-3d", np.ones(3, np.float32)), "3 dims"),
        (b"forged-junk", b"{not json", "invalid"),
        (b"forged-b64", emb("forged-b64", np.ones(3))[:-3] + b'%"}', "invalid"),
    ]


def test_forged_embeddings_and_oversized_records_are_dead_letters(kafka_broker, tmp_path):
    settings = isolated_run(
        Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path),
        "dlb",
        encoder_batch=8,
        image_root=SAMPLE,  # image files are read only inside the image root
    )
    from streams.worker import prepare_topics

    prepare_topics(settings)
    forged = _forged_embeddings()
    sender = Replayer(settings)
    for key, value, _ in forged:  # on the compacted topic before any worker starts
        sender.send_raw("item_embeddings", value, key=key)
    sender.close()
    full = settings.topics.full

    def letters(pipe: Pipeline, stage: str) -> list:
        return [dl for dl in pipe.dead_letters() if dl.stage == stage]

    real = read_hm_items(SAMPLE / "items.csv", limit=4)
    with Pipeline(settings) as pipe:
        # item 2: the replica dead-letters the forged records and the worker keeps running
        pipe.wait_until(
            "the replica's dead letters", lambda: pipe.count("dead_letters") >= 3, timeout=180
        )
        replica = letters(pipe, "replica")
        assert sorted(dl.key for dl in replica) == sorted(k.decode() for k, _, _ in forged)
        for key, value, words in forged:
            (dl,) = [d for d in replica if d.key == key.decode()]
            assert dl.value == value and words in dl.reason.lower(), dl.reason
            assert dl.topic == full("item_embeddings") and dl.offset is not None

        # item 4: one batch of good products with a non-finite price and a 750 KB bad base64
        r = pipe.replayer
        assert r is not None
        inf_price = b'{"item_id": "inf-price", "image_path": "%s", "price": Infinity}' % (
            real[0].image_path.encode()
        )
        big_b64 = json.dumps({"item_id": "big-b64", "image_b64": "%" * 750_000}).encode()
        batch = [p.to_bytes() for p in real[:2]] + [inf_price, big_b64]
        batch += [p.to_bytes() for p in real[2:]]
        dead0 = pipe.count("dead_letters")
        for value in batch:
            r.send_raw("products", value)
        r.producer.flush()
        pipe.wait_until(
            "products embedded or dead-lettered",
            lambda: (
                pipe.count("item_embeddings") - len(forged) + pipe.count("dead_letters") - dead0
                >= len(batch)
            ),
            timeout=300,
        )
        embedded = {
            ItemEmbedding.from_bytes(rec.value).item_id
            for rec in pipe.read("item_embeddings", idle=1.0, timeout=30)
            if rec.key not in {k for k, _, _ in forged}
        }
        assert embedded == {p.item_id for p in real}
        encode = {dl.offset: dl for dl in letters(pipe, "encode")}
        assert len(encode) == 2
        by_id = {}
        for dl in encode.values():
            by_id["big-b64" if dl.truncated else "inf-price"] = dl
        assert "price" in by_id["inf-price"].reason and by_id["inf-price"].value == inf_price
        big = by_id["big-b64"]
        assert "base64" in big.reason
        assert big.value_size == len(big_b64) and big.truncated
        assert big.value_sha256 == hashlib.sha256(big_b64).hexdigest()
        assert big_b64.startswith(big.value) and len(big.value) > 100_000

        # item 4: a 1 MB user_id, and a ts out of the float range, on views
        huge_user = {"event_id": "e-huge", "user_id": "u" * 1_000_000, "item_id": "x", "ts": 1}
        huge = json.dumps(huge_user).encode()
        overflow = b'{"event_id": "e-ovf", "user_id": "u", "item_id": "x", "ts": 1%s}' % (
            b"0" * 400
        )
        r.send_raw("views", huge)
        r.send_raw("views", overflow)
        r.producer.flush()
        pipe.wait_until(
            "the views' dead letters", lambda: len(letters(pipe, "ingest")) >= 2, timeout=180
        )
        ingest = {dl.value_sha256: dl for dl in letters(pipe, "ingest")}
        big_letter = ingest[hashlib.sha256(huge).hexdigest()]
        assert "user_id" in big_letter.reason and big_letter.truncated
        assert big_letter.value_size == len(huge) and huge.startswith(big_letter.value)
        assert len(big_letter.to_bytes()) < PRODUCER_LIMIT
        assert "ts" in ingest[hashlib.sha256(overflow).hexdigest()].reason
        assert pipe.worker.alive

        # item 2: a restart re-reads item-embeddings from the beginning and still starts
        n = len(letters(pipe, "replica"))
        pipe.restart()
        pipe.wait_until(
            "the replica's dead letters after a restart",
            lambda: len(letters(pipe, "replica")) >= n + len(forged),
            timeout=180,
        )
        assert pipe.worker.alive


@pytest.mark.parametrize("topic", ["views", "user_events"])
def test_tombstone_is_a_dead_letter(kafka_broker, tmp_path, topic):
    settings = isolated_run(Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path), "tomb")
    with Pipeline(settings) as pipe:
        r = pipe.replayer
        assert r is not None
        r.producer.send(settings.topics.full(topic), key=b"u1", value=None)
        r.producer.flush()
        pipe.wait_until("a dead letter", lambda: pipe.count("dead_letters") >= 1, timeout=90)
        (dl,) = pipe.dead_letters()
        assert "tombstone" in dl.reason and dl.topic == settings.topics.full(topic)
        assert dl.value == b"" and dl.value_size == 0
        assert base64.b64decode(dl.value_b64) == b""
        assert pipe.worker.alive
