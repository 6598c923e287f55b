"""Image + text fusion in the streaming path: real Kafka, a real worker with text_weight 0.5.

The encode agent stores each upload's text vector (title + category + description, the exported
MiniLM model) as the second named vector and publishes it on item-embeddings; the web API's
similar items are the numpy fused neighbours ``(1 - w) cos_image + w cos_text`` (items without
text: image cosine), which differ from the image-only neighbours.
"""

from __future__ import annotations

import http.client
import json
import time

import numpy as np
import pytest

from encoders.registry import ensure_text_model
from encoders.text import TextEncoder, upload_text
from streams.settings import REPO_ROOT, Settings, isolated_run
from vrec_tools.broker import find_free_port
from vrec_tools.harness import Pipeline
from vrec_tools.replay import read_hm_items

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"
W = 0.5
N = 40

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]


def get_json(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def wait_web(port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get_json(port, "/health")[0] == 200:
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError("the worker's web server did not come up")


def test_text_vectors_are_stored_and_similar_items_are_fused(kafka_broker, tmp_path) -> None:
    products = read_hm_items(SAMPLE / "items.csv")[:N]
    products[0] = products[0].model_copy(update={"description": "Soft jersey with a round neck"})
    no_text = {"title": "", "category": None, "description": None}
    products[1] = products[1].model_copy(update=no_text)
    settings = isolated_run(
        Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path),
        "text",
        text_weight=W,
        web_enabled=True,
        web_port=find_free_port(),
    )
    encoder = TextEncoder(ensure_text_model(settings.model_dir), threads=1)
    with Pipeline(settings) as pipe:
        wait_web(settings.web_port)
        pipe.index(products)
        got = pipe.embeddings()
        assert set(got) == {p.item_id for p in products}
        # the text vector on item-embeddings is the text encoder's vector of the upload text
        texts = [upload_text(p.title, p.category, p.description) for p in products]
        assert texts[1] == "" and "round neck" in texts[0]
        want = encoder.embed(texts)
        for p, t, vec in zip(products, texts, want):
            tv = got[p.item_id].text_vector
            if not t:
                assert tv is None
                continue
            assert tv is not None and tv.shape == (384,)
            np.testing.assert_allclose(tv, vec, atol=1e-5)

        ids = [p.item_id for p in products]
        img = np.stack([got[i].vector for i in ids]).astype(np.float64)
        txt = np.stack([want[k] if texts[k] else np.zeros(384) for k in range(N)])
        has_text = np.array([bool(t) for t in texts])
        differs = 0
        for q in (0, 1, 5, 17, 33):
            status, doc = get_json(settings.web_port, f"/items/{ids[q]}/similar?k=10")
            assert status == 200, doc
            assert doc["text_weight"] == W
            ci, ct = img @ img[q], txt @ txt[q]
            # items without text score by image; a query without text is an image search
            fused = np.where(has_text & has_text[q], (1 - W) * ci + W * ct, ci)
            ref = sorted(((float(fused[j]), ids[j]) for j in range(N) if j != q),
                         key=lambda t: (-t[0], t[1]))[:10]  # fmt: skip
            assert [i["item_id"] for i in doc["items"]] == [i for _, i in ref], ids[q]
            assert np.allclose([i["score"] for i in doc["items"]], [s for s, _ in ref], atol=1e-4)
            image_only = sorted((j for j in range(N) if j != q), key=lambda j: (-ci[j], ids[j]))
            differs += [ids[j] for j in image_only[:10]] != [i for _, i in ref]
        assert differs >= 3  # the text really changes the neighbours
