"""The worker's web server and image files against a hostile client (issue 12, item 5), with a
real broker and worker: writes need the token, the server listens on loopback only, Faust's
own pages are not served, image paths cannot leave the image root and the image endpoint
serves only the confined file, typed by decoding it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import SecretStr
from test_web import Http, wait_for  # noqa: I001 - the sibling test module (rootdir-less import)

from streams.settings import REPO_ROOT, Settings, isolated_run
from vrec_tools.broker import find_free_port
from vrec_tools.harness import Pipeline
from vrec_tools.replay import read_hm_items

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"
TOKEN = "s3cret-token"

pytestmark = pytest.mark.timeout(600)


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:
            out.add(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def test_web_api_and_image_files_are_confined(kafka_broker, tmp_path):
    real = read_hm_items(SAMPLE / "items.csv", limit=3)
    root, outside = tmp_path / "catalogue", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    for p in real:
        shutil.copy(p.image_path or "", root / Path(p.image_path or "").name)
    names = [Path(p.image_path or "").name for p in real]
    shutil.copy(root / names[0], outside / "private.jpg")
    (outside / "notes.txt").write_bytes(b"BM this is a text file\n" * 20)
    (root / "notes.bmp").write_bytes(b"BM inside the root, still no image\n" * 20)
    (root / "swap.jpg").symlink_to(root / names[1])

    settings = isolated_run(
        Settings(broker=kafka_broker.bootstrap, data_dir=tmp_path / "data"),
        "websec",
        web_enabled=True,
        web_port=find_free_port(),
        web_token=SecretStr(TOKEN),
        image_root=root,
        encoder_batch=4,
    )
    anon, client = Http(settings.web_port), Http(settings.web_port, TOKEN)
    products = [p.model_copy(update={"image_path": str(root / n)}) for p, n in zip(real, names)] + [
        real[0].model_copy(update={"item_id": "swap", "image_path": "swap.jpg"})
    ]
    hostile = {
        "abs-outside": str(outside / "private.jpg"),  # exists, readable, outside
        "dotdot": "../outside/private.jpg",
        "missing-outside": str(outside / "nope.jpg"),
        "etc": "/etc/passwd",
        "missing-inside": "nope.jpg",
    }
    with Pipeline(settings) as pipe:
        wait_for("the web server", lambda: anon.request("GET", "/health")[0] == 200, 180)

        # bound to loopback, not every interface
        assert _listening_addresses(settings.web_port) == {"127.0.0.1"}

        # Faust's own pages are not served
        for path in ("/router/", "/table/", "/table/users/", "/graph/", "/faust/"):
            status, _, _ = client.request("GET", path)
            assert status in (401, 403, 404), path
            assert anon.request("GET", path)[0] in (401, 403, 404), path

        pipe.index(products)
        assert pipe.replayer is not None
        for item_id, path in hostile.items():
            doc = {"item_id": item_id, "title": "x", "image_path": path}
            pipe.replayer.send_raw("products", json.dumps(doc).encode(), key=item_id.encode())
        pipe.replayer.producer.flush()
        pipe.wait_until(
            "hostile products dead-lettered",
            lambda: pipe.count("dead_letters") >= len(hostile),
            timeout=120,
        )
        assert set(pipe.embeddings()) == {p.item_id for p in products}
        reasons = {dl.reason for dl in pipe.dead_letters()}
        assert len(reasons) == 1, reasons  # no file existence or size leaks
        assert "inside the image root" in next(iter(reasons))

        # writes: refused without the token, accepted with it
        doc = {"item_id": real[1].item_id, "title": "overwritten", "image_path": names[2]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, _, raw = anon.request(
                "POST", "/items", json.dumps(doc).encode(), headers=headers
            )
            assert status == 401, (headers, raw)
        status, doc_out = client.post_json("/items", {**doc, "item_id": "new-one"})
        assert status == 202, doc_out
        status, bad = client.post_json("/items", {**doc, "image_path": "../outside/private.jpg"})
        assert status == 400 and "image root" in bad["error"]

        # the image endpoint serves the confined file, typed by decoding it
        status, headers, body = anon.request("GET", "/items/swap/image")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        assert body == (root / names[1]).read_bytes()
        (root / "swap.jpg").unlink()
        (root / "swap.jpg").symlink_to(outside / "notes.txt")  # swapped after indexing
        status, _, body = anon.request("GET", "/items/swap/image")
        assert status == 404 and b"BM this" not in body
        (root / "swap.jpg").unlink()
        (root / "swap.jpg").symlink_to(root / "notes.bmp")  # inside, but not an image
        status, headers, body = anon.request("GET", "/items/swap/image")
        assert status == 404 and b"BM inside" not in body
        assert pipe.worker.alive
