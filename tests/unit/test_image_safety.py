"""Image files stay inside the image roots, failures tell nothing about other files, large
images decode reduced and the decode pool's pixels are bounded (issue 12, items 5 and 6)."""

from __future__ import annotations

import base64
import io
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from encoders import ImageError, load_image
from encoders.preprocess import PixelBudget, confine, image_mime, read_confined
from streams.agents.encode import resolve_image
from streams.events import ProductUpload
from streams.settings import Settings, WebSettings
from streams.web.auth import check_access, token_matches


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ with a real image, outside/ with an image and a text file that starts like a BMP."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    jpeg = _save(Image.new("RGB", (40, 30), (200, 10, 10)), "JPEG")
    (root / "sub" / "a.jpg").write_bytes(jpeg)
    (outside / "b.jpg").write_bytes(jpeg)
    (outside / "secret.txt").write_bytes(b"BM secret text, not an image\n" * 40)
    return {"root": root, "outside": outside, "jpeg": root / "sub" / "a.jpg"}


# ---------------------------------------------------------------- confinement


def test_paths_inside_the_root_resolve(tree):
    root = tree["root"]
    assert confine("sub/a.jpg", [root]) == tree["jpeg"].resolve()
    assert confine(str(tree["jpeg"]), [root]) == tree["jpeg"].resolve()  # absolute, inside
    assert confine("sub/../sub/a.jpg", [root]) == tree["jpeg"].resolve()
    (root / "link.jpg").symlink_to(tree["jpeg"])  # a link that stays inside is fine
    assert confine("link.jpg", [root]) == tree["jpeg"].resolve()
    assert read_confined("sub/a.jpg", [root], 10_000) == tree["jpeg"].read_bytes()


def test_every_escape_and_every_missing_file_gets_the_same_reason(tree):
    root, outside = tree["root"], tree["outside"]
    (root / "escape.jpg").symlink_to(outside / "b.jpg")
    (root / "dirlink").symlink_to(outside)
    (root / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 20_000)
    (root / "empty.jpg").write_bytes(b"")
    names = [
        str(outside / "b.jpg"),  # absolute, outside, exists
        str(outside / "nope.jpg"),  # absolute, outside, missing
        "/etc/passwd",
        "../outside/b.jpg",  # relative escape
        "../../../../../../etc/hostname",
        "escape.jpg",  # symlink out of the root
        "dirlink/b.jpg",  # through a linked folder
        "missing.jpg",  # inside, missing
        "sub",  # a folder
        "big.jpg",  # inside, over max_bytes
        "empty.jpg",
    ]
    reasons = set()
    for name in names:
        with pytest.raises(ImageError) as err:
            read_confined(name, [root], 10_000)
        reasons.add(str(err.value))
    assert len(reasons) == 1, reasons  # nothing tells which files exist or how large they are
    (reason,) = reasons
    assert "20003" not in reason and "passwd" not in reason


def test_a_link_swapped_in_after_the_check_is_not_followed(tree, monkeypatch):
    root = tree["root"]
    link = root / "swap.jpg"
    link.symlink_to(tree["outside"] / "secret.txt")
    # confine() saw a plain file; by the time of the open the name is a link to elsewhere
    module = sys.modules["encoders.preprocess"]
    monkeypatch.setattr(module, "confine", lambda name, roots, max_bytes: link)
    with pytest.raises(ImageError):
        read_confined("swap.jpg", [root], 10_000)


def test_encode_agent_reads_only_inside_the_roots(tree):
    settings = Settings(image_root=tree["root"], data_dir=tree["root"].parent / "data")
    ok = ProductUpload(item_id="a", image_path="sub/a.jpg")
    assert resolve_image(ok, settings.image_roots) == tree["jpeg"].read_bytes()
    for name in (str(tree["outside"] / "b.jpg"), "../outside/b.jpg", "/etc/passwd"):
        with pytest.raises(ImageError, match="inside the image root"):
            resolve_image(ProductUpload(item_id="x", image_path=name), settings.image_roots)
    data = tree["jpeg"].read_bytes()
    b64 = ProductUpload(item_id="b", image_b64=base64.b64encode(data).decode())
    assert resolve_image(b64, settings.image_roots) == data


def test_default_image_root_is_under_the_data_dir(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.image_root is None
    assert s.image_roots == (tmp_path / "images", tmp_path / "uploads")


def test_served_type_comes_from_the_decoded_image(tree):
    assert image_mime(tree["jpeg"].read_bytes()) == "image/jpeg"
    assert image_mime(_save(Image.new("RGB", (5, 5)), "PNG")) == "image/png"
    with pytest.raises(ImageError):
        image_mime((tree["outside"] / "secret.txt").read_bytes())  # "BM..." is no BMP


# ---------------------------------------------------------------- web auth


def _s(**kw: object) -> WebSettings:
    return Settings(**kw).web


def test_writes_are_refused_without_a_configured_token():
    status, message = check_access("POST", "/items", None, _s())
    assert status == 403 and "VREC_WEB_TOKEN" in message
    assert check_access("POST", "/items", "Bearer x", _s()) is not None
    assert check_access("POST", "/items", None, _s(web_open_writes=True)) is None  # opt-in
    assert check_access("GET", "/items/a/similar", None, _s()) is None  # reads open by default
    assert check_access("POST", "/search/image", None, _s()) is None  # a read


def test_writes_need_the_bearer_token():
    s = _s(web_token="alpha, beta")
    assert s.tokens == ("alpha", "beta")
    for header in (None, "", "Bearer", "Bearer wrong", "Basic alpha", "alpha", "Bearer alph"):
        assert check_access("POST", "/items", header, s)[0] == 401, header
    assert check_access("POST", "/items", "Bearer alpha", s) is None
    assert check_access("PUT", "/items/x", "Bearer beta", s) is None
    assert check_access("DELETE", "/anything", None, s)[0] == 401  # unknown writes: denied
    assert check_access("POST", "/items", None, _s(web_token="a", web_open_writes=True))


def test_reads_behind_the_token_when_asked():
    s = _s(web_token="alpha", web_auth_reads=True)
    assert check_access("GET", "/users/u1/recommendations", None, s)[0] == 401
    assert check_access("GET", "/metrics", "Bearer alpha", s) is None
    assert check_access("GET", "/health", None, s) is None  # probes
    assert check_access("GET", "/", None, _s(web_auth_reads=True))[0] == 403


def test_faust_pages_always_need_the_token():
    for path in ("/router/", "/table/users/", "/graph/", "/faust/", "/performance/"):
        assert check_access("GET", path, None, _s())[0] == 403
        assert check_access("GET", path, None, _s(web_token="t"))[0] == 401
        assert check_access("GET", path, "Bearer t", _s(web_token="t")) is None
    assert check_access("GET", "/tables-of-mine", None, _s()) is None


def test_token_match_is_exact():
    assert token_matches("bearer  tok ", ["tok"])
    assert not token_matches("Bearer tok2", ["tok"])
    assert not token_matches("Bearer tok", [])


def test_app_binds_loopback_and_serves_no_faust_pages(tmp_path):
    from streams.app import build_app

    s = Settings(data_dir=tmp_path, web_enabled=True, store="qdrant-memory")
    app = build_app(s).app
    assert app.conf.web_bind == "127.0.0.1"
    served = [bp for _, bp in app.web.blueprints._enabled]
    assert not any("router" in str(bp) or "tables" in str(bp) for bp in served), served
    assert build_app(s.model_copy(update={"web_host": "10.1.2.3"})).app.conf.web_bind == (
        "10.1.2.3"
    )


# ---------------------------------------------------------------- decoded pixels


def test_large_images_decode_reduced():
    png = _save(Image.new("RGB", (6300, 6300), (30, 60, 90)), "PNG")
    assert len(png) < 200_000
    img = load_image(png, max_side=512)
    assert 512 <= max(img.size) < 1024 and img.mode == "RGB"
    jpeg = _save(Image.new("RGB", (4000, 3000), (200, 180, 20)), "JPEG")
    img = load_image(jpeg, max_side=512)
    assert 512 <= max(img.size) < 1024
    assert load_image(jpeg).size == (4000, 3000)  # no max_side: full size, as before
    small = _save(Image.new("RGB", (128, 192)), "JPEG")
    assert load_image(small, max_side=512).size == (128, 192)


def test_the_budget_bounds_pixels_decoded_at_once_and_loses_nothing():
    images = [_save(Image.new("RGB", (2000, 2000), (i, 0, 0)), "PNG") for i in range(8)]
    budget = PixelBudget(9_000_000)  # two 4 Mpx images at a time
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda d: load_image(d, max_side=256, budget=budget), images))
    assert len(out) == 8 and all(max(im.size) < 512 for im in out)
    assert 0 < budget.peak <= 9_000_000 and budget.used == 0

    alone = PixelBudget(1_000_000)  # each image is over it: decoded one at a time
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda d: load_image(d, budget=alone), images[:3]))
    assert [im.getpixel((0, 0))[0] for im in out] == [0, 1, 2]
    assert alone.peak == 1_000_000


def test_budget_grants_in_arrival_order():
    budget = PixelBudget(10)
    order: list[int] = []
    gate = threading.Event()

    def big() -> None:
        with budget.hold(10):
            gate.wait(5)

    t = threading.Thread(target=big)
    t.start()
    while budget.used == 0:
        os.sched_yield()

    def take(i: int, n: int) -> None:
        with budget.hold(n):
            order.append(i)

    waiters = [threading.Thread(target=take, args=(i, n)) for i, n in enumerate((8, 1, 1))]
    for w in waiters:
        w.start()
        while len(budget._queue) < waiters.index(w) + 1:
            os.sched_yield()
    gate.set()
    for w in (t, *waiters):
        w.join(5)
    assert order[0] == 0 and sorted(order) == [0, 1, 2]
