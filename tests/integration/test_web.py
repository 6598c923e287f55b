"""The worker's web server end to end: real Kafka, a real worker process with the web enabled.

The fixture catalogue is indexed and 200 recorded events replayed; then the JSON API must agree
with what the pipeline published (each user's list is the user's last recommendation, the unknown
user gets the published trending list), similar items must be the numpy nearest neighbours,
images come from the payload's file and nothing else, uploads become searchable, and the
Prometheus counters move with the traffic.

The tests of this module share one worker and run in file order: the first compares lists with
the published ones before uploads change the catalogue.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from streams.events import Interaction, ProductUpload, Recommendation
from streams.settings import REPO_ROOT, Settings, isolated_run
from vrec_tools.broker import find_free_port
from vrec_tools.harness import Pipeline
from vrec_tools.replay import read_hm_items, read_log

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"
N_EVENTS = 200

pytestmark = pytest.mark.timeout(900)
TOKEN = "test-write-token"


# -- a tiny HTTP client (stdlib: paths are sent exactly as written) --------------------------
@dataclass
class Http:
    port: int
    token: str = ""  # sent as "Authorization: Bearer <token>" when set

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = dict(headers or {})
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, _, body = self.request("GET", path)
        return status, json.loads(body)

    def post_json(self, path: str, doc: Any) -> tuple[int, Any]:
        data = json.dumps(doc).encode()
        status, _, body = self.request("POST", path, data, {"Content-Type": "application/json"})
        return status, json.loads(body)

    def post_form(
        self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]
    ) -> tuple[int, Any]:
        body, ctype = multipart(fields, files)
        status, _, raw = self.request("POST", path, body, {"Content-Type": ctype})
        return status, json.loads(raw)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = f"vrec{uuid.uuid4().hex}"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for name, (filename, data) in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.5):
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


# -- Prometheus scraping -------------------------------------------------------------------------
Samples = list[tuple[str, dict[str, str], float]]


def scrape(web: Http) -> Samples:
    status, headers, body = web.request("GET", "/metrics")
    assert status == 200, body[:500]
    assert headers["content-type"].startswith("text/plain")
    return [
        (s.name, dict(s.labels), s.value)
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v
        for n, lab, v in samples
        if n == name and all(lab.get(k) == want for k, want in labels.items())
    )


# -- the shared worker -----------------------------------------------------------------------------
@dataclass
class WebRun:
    pipe: Pipeline
    settings: Settings
    http: Http
    products: list[ProductUpload]
    events: list[Interaction]  # all fixture events
    replayed: list[Interaction]  # those sent so far


def jpeg_variant(path: str, angle: float) -> bytes:
    """A new product photo: a mirrored, slightly rotated copy of a fixture image."""
    img = ImageOps.mirror(Image.open(path).convert("RGB")).rotate(angle, fillcolor="white")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def web(kafka_broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebRun]:
    products = read_hm_items(SAMPLE / "items.csv")
    _, events = read_log(SAMPLE / "events.jsonl")
    settings = isolated_run(
        Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path_factory.mktemp("web")),
        "web",
        personalise_after=2,
        ranker="visual",  # the page test checks "because you bought" reasons of the visual ranker
        exclude="purchased",
        web_enabled=True,
        web_port=find_free_port(),
        web_token=SecretStr(TOKEN),  # POST /items needs it
    )
    client = Http(settings.web_port, TOKEN)
    with Pipeline(settings) as pipe:
        wait_for("the web server", lambda: client.request("GET", "/health")[0] == 200, 180)
        pipe.index(products)
        replayed = events[:N_EVENTS]
        pipe.replay(replayed)
        yield WebRun(pipe, settings, client, products, events, list(replayed))


def last_recommendations(pipe: Pipeline) -> dict[str, Recommendation]:
    last: dict[str, Recommendation] = {}
    for rec in pipe.recommendations():  # one partition: topic order is processing order
        last[rec.user_id] = rec
    return last


def final_trending(run: WebRun) -> Recommendation:
    newest = max(e.ts for e in run.replayed)
    found: list[Recommendation] = []

    def settled() -> bool:
        recs = run.pipe.read("trending", idle=0.5, timeout=10)
        found[:] = [Recommendation.from_bytes(r.value) for r in recs[-1:]]
        return bool(found) and found[0].event_ts == newest

    run.pipe.wait_until("the final trending list", settled, timeout=60)
    return found[0]


# -- tests -------------------------------------------------------------------------------------
def test_health(web: WebRun) -> None:
    status, doc = web.http.get_json("/health")
    assert status == 200
    assert doc["ok"] is True
    assert doc["model_id"].startswith("efficientnet_lite0-")
    assert doc["store_count"] == len(web.products)


def test_recommendations_are_each_users_current_list(web: WebRun) -> None:
    last = last_recommendations(web.pipe)
    bought: dict[str, set[str]] = {}
    seen: dict[str, set[str]] = {}
    for e in web.replayed:
        seen.setdefault(e.user_id, set()).add(e.item_id)
        if e.kind == "purchase":
            bought.setdefault(e.user_id, set()).add(e.item_id)
    trending_ids = [i.item_id for i in final_trending(web).items]
    visual = [u for u, r in last.items() if r.strategy == "visual"]
    assert len(visual) >= 10, "the replay should warm up some users"
    reasons = {"bought": 0, "viewed": 0}
    for user, rec in last.items():
        status, doc = web.http.get_json(f"/users/{quote(user, safe='')}/recommendations")
        assert status == 200, doc
        assert doc["user_id"] == user and doc["known"] is True
        assert doc["model_id"] == rec.model_id
        ids = [i["item_id"] for i in doc["items"]]
        scores = [i["score"] for i in doc["items"]]
        assert doc["history"] and {h["item_id"] for h in doc["history"]} <= seen[user]
        if rec.strategy != "visual":  # cold user: the trending list as it is now
            assert doc["strategy"] == "trending"
            allowed = [i for i in trending_ids if i not in bought.get(user, set())]
            assert ids[: len(allowed)] == allowed
            continue
        assert doc["strategy"] == "visual"
        assert ids == [i.item_id for i in rec.items], user
        assert np.allclose(scores, [i.score for i in rec.items], atol=1e-6)
        assert scores == sorted(scores, reverse=True)
        for item in doc["items"]:
            assert item["image_url"] == f"/items/{item['item_id']}/image"
            assert item["title"]
            if item["reason"] == "trending":
                assert item["reason_text"] == "trending now"
                continue
            because = item["because"]
            assert because["item_id"] in seen[user]
            if because["kind"] == "purchase":
                assert because["item_id"] in bought[user]
                assert item["reason_text"] == f"because you bought {because['title']}"
                reasons["bought"] += 1
            else:
                assert item["reason_text"] == f"similar to {because['title']} you viewed"
                reasons["viewed"] += 1
    assert reasons["bought"] > 0


def test_unknown_user_gets_the_trending_list(web: WebRun) -> None:
    published = final_trending(web)
    status, doc = web.http.get_json("/users/no-such-user-0000/recommendations")
    assert status == 200
    assert doc["known"] is False and doc["n_events"] == 0 and doc["history"] == []
    assert doc["strategy"] == "trending"
    assert [i["item_id"] for i in doc["items"]] == [i.item_id for i in published.items]
    assert [i["score"] for i in doc["items"]] == [i.score for i in published.items]
    assert {i["reason_text"] for i in doc["items"]} == {"trending now"}


def test_similar_items_are_the_nearest_neighbours(web: WebRun) -> None:
    embeddings = {i: e.vector for i, e in web.pipe.embeddings().items()}
    ids = sorted(embeddings)
    mat = np.stack([embeddings[i] for i in ids]).astype(np.float64)
    mat /= np.linalg.norm(mat, axis=1, keepdims=True)
    for item in (web.products[0].item_id, web.products[57].item_id, web.products[150].item_id):
        status, doc = web.http.get_json(f"/items/{item}/similar?k=12")
        assert status == 200, doc
        assert doc["item"]["item_id"] == item
        got = [s["item_id"] for s in doc["items"]]
        scores = [s["score"] for s in doc["items"]]
        assert len(got) == 12 and item not in got and len(set(got)) == 12
        assert scores == sorted(scores, reverse=True)
        sims = mat @ mat[ids.index(item)]
        want = sorted(
            ((float(s), i) for i, s in zip(ids, sims) if i != item), key=lambda t: (-t[0], t[1])
        )[:12]
        assert got == [i for _, i in want]
        assert np.allclose(scores, [s for s, _ in want], atol=1e-4)
    status, doc = web.http.get_json(f"/items/{web.products[0].item_id}/similar?k=3")
    assert status == 200 and len(doc["items"]) == 3
    for bad in ("0", "101", "abc"):
        status, doc = web.http.get_json(f"/items/{web.products[0].item_id}/similar?k={bad}")
        assert status == 400 and "k must" in doc["error"]
    status, doc = web.http.get_json("/items/no-such-item/similar")
    assert status == 404


def test_item_image_is_the_payload_file_and_nothing_else(web: WebRun) -> None:
    product = web.products[3]
    status, headers, body = web.http.request("GET", f"/items/{product.item_id}/image")
    assert status == 200
    assert headers["content-type"] == "image/jpeg"
    assert body[:3] == b"\xff\xd8\xff"
    assert body == Path(product.image_path or "").read_bytes()
    refused = [
        f"/items/{product.item_id}/image?path=/etc/passwd",
        f"/items/{product.item_id}/image?image_path=../../../../etc/passwd",
        "/items/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd/image",
        "/items/%2Fetc%2Fpasswd/image",
        f"/items/{product.item_id}/image/../../../../../etc/passwd",
        "/items/../../../../etc/passwd",
        "/items/no-such-item/image",
    ]
    for path in refused:
        status, _, body = web.http.request("GET", path)
        assert status in (400, 403, 404), (path, status)
        assert b"root:" not in body, path
    # Nor can an upload name a file of the worker's machine.
    status, doc = web.http.post_json(
        "/items", {"item_id": "sneaky", "title": "x", "image_path": "/etc/passwd"}
    )
    assert status == 400 and "image_path" in doc["error"]
    assert web.http.get_json("/items/sneaky/similar")[0] == 404


def test_uploads_become_searchable(web: WebRun) -> None:
    photo = jpeg_variant(web.products[5].image_path or "", 7)
    status, doc = web.http.post_form(
        "/items",
        {"item_id": "web-upload-1", "title": "Mirrored upload", "category": "Test"},
        {"image": ("photo.jpg", photo)},
    )
    assert status == 202, doc
    assert doc["item_id"] == "web-upload-1" and doc["status"] == "accepted"
    photo2 = jpeg_variant(web.products[42].image_path or "", -9)
    status, doc = web.http.post_json(
        "/items",
        {
            "item_id": "web-upload-2",
            "title": "JSON upload",
            "image_b64": base64.b64encode(photo2).decode(),
        },
    )
    assert status == 202, doc
    for item_id, data in (("web-upload-1", photo), ("web-upload-2", photo2)):
        wait_for(
            f"{item_id} to be indexed",
            lambda item_id=item_id: web.http.get_json(f"/items/{item_id}/similar")[0] == 200,
        )
        status, headers, body = web.http.request("GET", f"/items/{item_id}/image")
        assert status == 200 and body == data and headers["content-type"] == "image/jpeg"
        status, found = web.http.post_form("/search/image?k=5", {}, {"image": ("q.jpg", data)})
        assert status == 200, found
        assert found["items"][0]["item_id"] == item_id
        assert found["items"][0]["score"] > 0.999
        assert len(found["items"]) == 5
    # the raw body works too, and the search is by looks: the original photo is close
    status, _, raw = web.http.request(
        "POST", "/search/image?k=3", photo, {"Content-Type": "image/jpeg"}
    )
    found = json.loads(raw)
    assert status == 200 and web.products[5].item_id in [i["item_id"] for i in found["items"]]
    status, doc = web.http.get_json("/health")
    assert doc["store_count"] == len(web.products) + 2
    # bad uploads are refused with a reason
    bad = [
        ({"item_id": "bad-1"}, {"image": ("x.jpg", b"not an image at all")}, "image rejected"),
        ({"item_id": "../etc"}, {"image": ("x.jpg", photo)}, "item_id"),
        ({"item_id": "bad-2"}, {"file": ("x.jpg", photo)}, "image"),
    ]
    for fields, files, why in bad:
        status, doc = web.http.post_form("/items", fields, files)
        assert status == 400 and why in doc["error"], doc
    body, ctype = multipart({"item_id": "evil"}, {"image": ("x.jpg", photo)})
    status, _, raw = web.http.request(
        "POST", "/items", body, {"Content-Type": ctype, "Origin": "https://evil.example"}
    )
    assert status == 403 and "cross-origin" in json.loads(raw)["error"]
    status, doc = web.http.post_json("/items", {"item_id": "bad-3", "title": "no image"})
    assert status == 400 and "no image" in doc["error"]
    status, _, raw = web.http.request(
        "POST", "/search/image", b"GIF89a-nope", {"Content-Type": "image/gif"}
    )
    assert status == 400 and "image rejected" in json.loads(raw)["error"]


def test_metrics_move_with_the_traffic(web: WebRun) -> None:
    s = web.settings.topics
    views, purchases = s.full("views"), s.full("purchases")
    before = scrape(web.http)
    assert total(before, "vrec_store_items") >= len(web.products)
    info = [lab for n, lab, _ in before if n == "vrec_info"]
    assert info and info[0]["model_id"].startswith("efficientnet_lite0-")

    more = web.events[N_EVENTS : N_EVENTS + 100]
    web.pipe.replay(more)
    web.replayed.extend(more)

    # one list per user per micro-batch: at least one per user of these events
    users_more = len({e.user_id for e in more})

    def moved() -> Samples | None:
        after = scrape(web.http)
        ok = (
            total(after, "vrec_messages_in_total", topic=views)
            + total(after, "vrec_messages_in_total", topic=purchases)
            - total(before, "vrec_messages_in_total", topic=views)
            - total(before, "vrec_messages_in_total", topic=purchases)
            >= len(more)
            and total(after, "vrec_recommendations_total")
            - total(before, "vrec_recommendations_total")
            >= users_more
            and total(after, "vrec_event_to_recommendation_seconds_count")
            - total(before, "vrec_event_to_recommendation_seconds_count")
            >= users_more
        )
        return after if ok else None

    after = wait_for("the counters to move", moved, timeout=30)
    assert total(after, "vrec_messages_out_total", topic=s.full("recommendations")) >= len(
        {e.user_id for e in web.replayed}
    )
    assert total(after, "vrec_recommendations_total", strategy="visual") > 0
    assert total(after, "vrec_event_to_recommendation_seconds_sum") > 0
    users = len({e.user_id for e in web.replayed})
    wait_for(
        "the sampled users table size",
        lambda: total(scrape(web.http), "vrec_table_keys", table="users") == users,
        timeout=30,
    )
    lags = [lab for n, lab, _ in after if n == "vrec_consumer_lag"]
    assert any(lab["topic"] == s.full("user_events") for lab in lags)
    assert total(after, "vrec_http_requests_total", view="vrec_health", status="200") >= 1

    dead_before = total(after, "vrec_dead_letters_total", stage="ingest")
    n_dead = web.pipe.count("dead_letters")
    assert web.pipe.replayer is not None
    web.pipe.replayer.send_raw("views", b'{"user_id": "u1", "item_id": ', key=b"u1")
    web.pipe.replayer.producer.flush()
    web.pipe.wait_until("the dead letter", lambda: web.pipe.count("dead_letters") > n_dead, 60)
    wait_for(
        "the dead-letter counter",
        lambda: (
            total(scrape(web.http), "vrec_dead_letters_total", stage="ingest") >= dead_before + 1
        ),
        timeout=30,
    )
    # OpenMetrics on request
    status, headers, body = web.http.request(
        "GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_pages_are_served(web: WebRun) -> None:
    user = web.replayed[-1].user_id
    for path, marker in (
        ("/", b'id="search-form"'),
        (f"/users/{user}", b'id="recs"'),
        (f"/items/{web.products[0].item_id}", b'id="similar"'),
    ):
        status, headers, body = web.http.request("GET", path)
        assert status == 200 and headers["content-type"].startswith("text/html"), path
        assert marker in body
        assert "script-src 'self'" in headers["content-security-policy"]
    status, headers, body = web.http.request("GET", "/static/vrec.js")
    assert status == 200 and b"refreshUser" in body
    # ids land in the page as data, never as markup
    status, _, body = web.http.request("GET", "/users/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert status == 200 and b"<img src=x" not in body


# -- the pure parts, no broker -------------------------------------------------------------------
def test_partition_of_a_user_is_kafkas() -> None:
    from kafka.partitioner.default import murmur2

    from streams.web.service import partition_for

    for key in (b"u1", b"c2a93116bb10e3b3", "ü".encode()):
        assert partition_for(key, 1) == 0
        assert partition_for(key, 12) == (murmur2(key) & 0x7FFFFFFF) % 12


def test_image_sniffing() -> None:
    from streams.web.service import sniff_image_type

    assert sniff_image_type(Path(SAMPLE / "images" / "0156231001.jpg").read_bytes()) == "image/jpeg"
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    assert sniff_image_type(buf.getvalue()) == "image/png"
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "WEBP")
    assert sniff_image_type(buf.getvalue()) == "image/webp"
    assert sniff_image_type(b"root:x:0:0:root:/root:/bin/bash\n") is None


def test_sensor_counts_and_latency() -> None:
    from types import SimpleNamespace

    from streams.metrics import VrecMetrics, VrecSensor

    m = VrecMetrics()
    sensor = VrecSensor(
        m, interaction_topics={"views"}, recommendations_topic="recs", dead_letters_topic="dead"
    )
    tp = SimpleNamespace(topic="views", partition=0)
    sensor.on_message_in(tp, 0, SimpleNamespace(value=b'{"event_id": "e1", "user_id": "u"}'))
    sensor.on_message_in(tp, 1, SimpleNamespace(value=b"not json"))
    rec = Recommendation(user_id="u", items=[], model_id="m", event_id="e1")
    state = sensor.on_send_initiated(None, "recs", SimpleNamespace(value=rec.to_bytes()), 0, 0)
    sensor.on_send_completed(None, state, None)
    dead = b'{"reason": "x", "topic": "views", "value_b64": "", "stage": "ingest"}'
    state = sensor.on_send_initiated(None, "dead", SimpleNamespace(value=dead), 0, 0)
    sensor.on_send_completed(None, state, None)
    sensor.on_send_error(None, RuntimeError(), ("other",))
    text, _ = m.render()
    samples = [
        (s.name, dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    ]
    assert total(samples, "vrec_messages_in_total", topic="views") == 2
    assert total(samples, "vrec_messages_out_total", topic="recs") == 1
    assert total(samples, "vrec_recommendations_total", strategy="visual") == 1
    assert total(samples, "vrec_dead_letters_total", stage="ingest") == 1
    assert total(samples, "vrec_send_errors_total", topic="other") == 1
    assert total(samples, "vrec_event_to_recommendation_seconds_count") == 1
    m.observe_encode(32, 0.5)
    text, _ = m.render()
    assert b'vrec_encoded_images_total{source="products"} 32.0' in text
