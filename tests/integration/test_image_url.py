"""Images by URL through a real worker: a product whose image_url is on an allowlisted local
HTTP server (127.0.0.1) is indexed, with the same vector as the same file by image_path;
URLs at blocked addresses, a 404 and non-image content are dead letters with their reason.
Nothing connects outside 127.0.0.1 (the blocked addresses are refused before connecting)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import REPO_ROOT, Settings, isolated_run
from vrec_tools.harness import Pipeline
from vrec_tools.replay import read_hm_items

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"

pytestmark = pytest.mark.timeout(600)


def _server(jpeg: bytes) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        hits: list[str] = []

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            Handler.hits.append(self.path)
            routes = {
                "/a.jpg": (200, "image/jpeg", jpeg, {}),
                "/hop": (302, "text/plain", b"", {"Location": "/a.jpg"}),
                "/to-metadata": (302, "text/plain", b"", {"Location": "http://169.254.169.254/"}),
                "/page.html": (200, "text/html", b"<html></html>", {}),
            }
            code, ctype, body, extra = routes.get(self.path, (404, "text/plain", b"no", {}))
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.hits = Handler.hits  # type: ignore[attr-defined]
    return srv


@pytest.fixture
def image_server() -> Iterator[tuple[http.server.ThreadingHTTPServer, Path]]:
    path = Path(read_hm_items(SAMPLE / "items.csv", limit=1)[0].image_path or "")
    srv = _server(path.read_bytes())
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, path
    finally:
        srv.shutdown()
        srv.server_close()


def test_products_by_url_are_indexed_or_dead_lettered(kafka_broker, tmp_path, image_server):
    srv, path = image_server
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    settings = isolated_run(
        Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path),
        "imgurl",
        encoder_batch=4,
        image_fetch_allow_hosts=f"127.0.0.1:{srv.server_address[1]}",
        image_fetch_timeout_s=5,
        image_fetch_retries=1,
    )
    good = {
        "by-url": f"{base}/a.jpg",
        "by-url-redirect": f"{base}/hop",
    }
    bad = {
        "metadata": ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        "redirect-to-metadata": (f"{base}/to-metadata", "cloud metadata"),
        "other-loopback": (f"http://127.0.0.2:{srv.server_address[1]}/a.jpg", "loopback"),
        "decimal-loopback": ("http://2130706433/a.jpg", "loopback"),
        "private": ("http://10.0.0.1/a.jpg", "private"),
        "missing": (f"{base}/nope.jpg", "HTTP 404"),
        "html": (f"{base}/page.html", "content type"),
    }

    def product(item_id: str, **image: str) -> bytes:
        return json.dumps({"item_id": item_id, "title": "t", **image}).encode()

    with Pipeline(settings) as pipe:
        r = pipe.replayer
        assert r is not None
        values = {"by-path": product("by-path", image_path=str(path))}
        values |= {k: product(k, image_url=u) for k, u in good.items()}
        values |= {k: product(k, image_url=u) for k, (u, _) in bad.items()}
        values["two-images"] = product("two-images", image_url=good["by-url"], image_b64="AAAA")
        for value in values.values():
            r.send_raw("products", value)
        r.producer.flush()
        pipe.wait_until(
            "products embedded or dead-lettered",
            lambda: pipe.count("item_embeddings") + pipe.count("dead_letters") >= len(values),
            timeout=300,
        )
        embedded = pipe.embeddings()
        assert set(embedded) == {"by-path", *good}
        for item_id in good:  # the same bytes: the same vector
            assert embedded[item_id].vector_b64 == embedded["by-path"].vector_b64
            assert embedded[item_id].payload["image_url"] == good[item_id]
        letters = {dl.value: dl for dl in pipe.dead_letters()}
        assert len(letters) == len(bad) + 1
        for item_id, (_, words) in bad.items():
            dl = letters[values[item_id]]
            assert dl.reason.startswith("image_url: ") and words in dl.reason, dl.reason
            assert dl.stage == "encode" and dl.topic == settings.topics.full("products")
        assert "exactly one" in letters[values["two-images"]].reason
        assert pipe.worker.alive
    # the server saw only its own paths; 404 and HTML were not retried
    assert sorted(srv.hits) == sorted(  # type: ignore[attr-defined]
        ["/a.jpg", "/hop", "/a.jpg", "/to-metadata", "/nope.jpg", "/page.html"]
    )
