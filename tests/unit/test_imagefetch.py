"""streams.imagefetch: the address policy (pure) and the fetcher against a local HTTP server on
127.0.0.1. No test connects anywhere else: names that resolve to blocked ranges come from an
injected resolver, and every connection attempt is recorded and checked."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import threading
import time
from collections.abc import Iterator

import aiohttp.connector
import pytest

from streams.imagefetch import (
    FetchError,
    ImageFetcher,
    check_url,
    parse_allow,
    parse_ip_host,
    refusal,
    sniff_image,
)
from streams.settings import REPO_ROOT, Settings

IMAGES = REPO_ROOT / "tests" / "fixtures" / "hm_sample" / "images"
JPEG = sorted(IMAGES.glob("*.jpg"))[0].read_bytes()
LIMIT = 100_000
HTML = b"<!doctype html><html><body>not an image</body></html>" * 4

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- address policy (pure)

BLOCKED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "not globally routable",  # carrier-grade NAT
    "169.254.1.1": "link-local",
    "169.254.169.254": "cloud metadata",
    "0.0.0.0": "unspecified",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd00:ec2::254": "cloud metadata",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:169.254.169.254": "cloud metadata",
    "::ffff:10.0.0.1": "private",
    "::ffff:7f00:1": "loopback",  # the same mapped address, written in hex
    "64:ff9b::a9fe:a9fe": "cloud metadata",  # NAT64 of 169.254.169.254
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
    "::127.0.0.1": "reserved",  # IPv4-compatible (deprecated)
}


@pytest.mark.parametrize(("text", "words"), sorted(BLOCKED.items()))
def test_policy_refuses_blocked_addresses(text: str, words: str) -> None:
    reason = refusal(ipaddress.ip_address(text))
    assert reason is not None and words in reason, reason


@pytest.mark.parametrize("text", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_policy_allows_public_addresses(text: str) -> None:
    assert refusal(ipaddress.ip_address(text)) is None


def test_allowlist_opens_chosen_hosts_only() -> None:
    allow = parse_allow("127.0.0.1:8080, images.internal, 10.1.0.0/16, [::1]:9000")
    lo = ipaddress.ip_address("127.0.0.1")
    assert refusal(lo, host="127.0.0.1", port=8080, allow=allow) is None
    assert refusal(lo, host="127.0.0.1", port=8081, allow=allow) is not None  # other port
    assert refusal(lo, host="images.internal", port=80, allow=allow) is None  # named host
    assert refusal(lo, host="IMAGES.internal.", port=443, allow=allow) is None
    assert refusal(lo, host="other.internal", port=80, allow=allow) is not None
    assert refusal(ipaddress.ip_address("10.1.2.3"), host="x", port=80, allow=allow) is None
    assert refusal(ipaddress.ip_address("10.2.0.1"), host="x", port=80, allow=allow) is not None
    assert refusal(ipaddress.ip_address("::1"), host="::1", port=9000, allow=allow) is None
    assert refusal(ipaddress.ip_address("127.0.0.2"), host="127.0.0.2", port=8080, allow=allow)
    # cloud metadata stays closed whatever the allowlist says
    everything = parse_allow("0.0.0.0/0, ::/0, 169.254.169.254")
    meta = ipaddress.ip_address("169.254.169.254")
    assert "cloud metadata" in (refusal(meta, host="169.254.169.254", port=80, allow=everything))


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "host:port", "[::1", ":80", "a b"])
def test_allowlist_rejects_malformed_entries(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_allow(bad)


@pytest.mark.parametrize(
    ("host", "addr"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # decimal
        ("0x7f.1", "127.0.0.1"),  # hex, short form
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("169.254.169.254.", "169.254.169.254"),  # a trailing dot
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("example.com", None),
        ("1.2.3.4.5", None),
        ("0x1g.1", None),
        ("256.1.1.1", None),
        ("4294967296", None),  # over 32 bits
        ("", None),
    ],
)
def test_parse_ip_host_reads_every_ipv4_literal_form(host: str, addr: str | None) -> None:
    got = parse_ip_host(host)
    assert (None if got is None else str(got)) == addr


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://2130706433/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://0x7f000001/a.jpg", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "cloud metadata"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://10.0.0.1:8080/x.jpg", "private"),
        ("http://0/", "unspecified"),
        ("http://0x08080808/", "non-canonical"),  # 8.8.8.8, but only dotted decimal is fetched
        ("http://8.8.8.8./", "non-canonical"),
        ("ftp://example.com/a.jpg", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("http:///nohost", "host"),
        ("http://user:pw@example.com/a.jpg", "credentials"),
    ],
)
def test_check_url_refuses_without_resolving(url: str, words: str) -> None:
    reason = check_url(url)
    assert reason is not None and words in reason, reason


def test_check_url_leaves_names_to_the_resolver() -> None:
    assert check_url("https://cdn.example.com/a.jpg") is None
    assert check_url("http://8.8.8.8/a.jpg") is None
    assert check_url("http://127.0.0.1:8080/a.jpg", parse_allow("127.0.0.1:8080")) is None


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (JPEG[:16], "JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, "PNG"),
        (b"GIF89a" + b"\0" * 8, "GIF"),
        (b"GIF87a" + b"\0" * 8, "GIF"),
        (b"RIFF\x10\0\0\0WEBPVP8 ", "WEBP"),
        (b"BM" + b"\0" * 14, "BMP"),
        (b"II*\0" + b"\0" * 8, "TIFF"),
        (b"MM\0*" + b"\0" * 8, "TIFF"),
        (HTML[:16], None),
        (b"RIFF\x10\0\0\0WAVEfmt ", None),
        (b"", None),
    ],
)
def test_sniff_image(head: bytes, fmt: str | None) -> None:
    assert sniff_image(head) == fmt


# ---------------------------------------------------------------- a local server


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # a body without Content-Length ends when the socket closes
    hits: dict[str, int] = {}

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "image/jpeg", **headers) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if "length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            if k != "length":
                self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path
        _Handler.hits[path] = _Handler.hits.get(path, 0) + 1
        port = self.server.server_address[1]
        try:
            if path == "/ok.jpg":
                self._send(200, JPEG, ctype="image/jpeg; charset=binary")
            elif path == "/missing.jpg":
                self._send(404, b"nope", ctype="text/plain")
            elif path == "/flaky.jpg":  # two 503s, then the image
                if _Handler.hits[path] <= 2:
                    self._send(503, b"busy", ctype="text/plain")
                else:
                    self._send(200, JPEG)
            elif path == "/down.jpg":
                self._send(502, b"bad gateway", ctype="text/plain")
            elif path == "/slow.jpg":
                time.sleep(3)
                self._send(200, JPEG)
            elif path == "/big-declared.jpg":  # says 50 MB up front
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(50 * 2**20))
                self.end_headers()
                self.wfile.write(JPEG)
            elif path == "/big-stream.jpg":  # no Content-Length, 4 MB of "JPEG"
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                self.wfile.write(JPEG[:4])
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            elif path == "/loop":
                self._send(302, ctype="text/plain", Location="/loop")
            elif path == "/hop":
                self._send(301, ctype="text/plain", Location="/ok.jpg")
            elif path == "/to-metadata":
                self._send(302, ctype="text/plain", Location="http://169.254.169.254/latest/")
            elif path == "/to-loopback2":
                self._send(307, ctype="text/plain", Location=f"http://127.0.0.2:{port}/ok.jpg")
            elif path == "/to-decimal":
                self._send(302, ctype="text/plain", Location=f"http://2130706433:{port}/ok.jpg")
            elif path == "/to-ftp":
                self._send(302, ctype="text/plain", Location="ftp://127.0.0.1/ok.jpg")
            elif path == "/html-as-jpeg.jpg":
                self._send(200, HTML, ctype="image/jpeg")
            elif path == "/page.html":
                self._send(200, HTML, ctype="text/html")
            elif path == "/jpeg-as-html":
                self._send(200, JPEG, ctype="text/html")
            else:
                self._send(404, b"", ctype="text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client cut the stream


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def connections(monkeypatch) -> list[str]:
    """Every address aiohttp tries to connect to; anything but 127.0.0.1 fails the test."""
    seen: list[str] = []
    original = aiohttp.connector.aiohappyeyeballs.start_connection

    async def recording(addr_infos, *args, **kwargs):
        for info in addr_infos:
            seen.append(info[4][0])
            assert info[4][0] == "127.0.0.1", f"tried to connect to {info[4][0]}"
        return await original(addr_infos, *args, **kwargs)

    monkeypatch.setattr(aiohttp.connector.aiohappyeyeballs, "start_connection", recording)
    return seen


def _fetcher(server: str, **kw) -> ImageFetcher:
    opts = {
        "max_bytes": LIMIT,
        "allow": parse_allow(server),
        "timeout_s": 0.5,
        "total_s": 5.0,
        "max_redirects": 3,
        "retries": 2,
        "backoff_s": 0.01,
        **kw,
    }
    return ImageFetcher(**opts)


def _fetch(fetcher: ImageFetcher, url: str) -> bytes:
    return asyncio.run(fetcher.fetch(url))


def _refused(fetcher: ImageFetcher, url: str, words: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        _fetch(fetcher, url)
    assert words.lower() in str(info.value).lower(), str(info.value)
    return info.value


def test_fetches_an_image(server: str, connections: list[str]) -> None:
    assert _fetch(_fetcher(server), f"http://{server}/ok.jpg") == JPEG
    assert connections == ["127.0.0.1"]


def test_follows_a_redirect(server: str, connections: list[str]) -> None:
    assert _fetch(_fetcher(server), f"http://{server}/hop") == JPEG


def test_the_allowlist_is_needed_for_loopback(server: str, connections: list[str]) -> None:
    _refused(_fetcher(server, allow=()), f"http://{server}/ok.jpg", "loopback")
    assert connections == []


def test_404_is_not_retried(server: str, connections: list[str]) -> None:
    _Handler.hits.pop("/missing.jpg", None)
    err = _refused(_fetcher(server), f"http://{server}/missing.jpg", "HTTP 404")
    assert not err.transient and _Handler.hits["/missing.jpg"] == 1


def test_5xx_is_retried_with_backoff(server: str, connections: list[str]) -> None:
    _Handler.hits.pop("/flaky.jpg", None)
    assert _fetch(_fetcher(server, retries=2), f"http://{server}/flaky.jpg") == JPEG
    assert _Handler.hits["/flaky.jpg"] == 3
    _Handler.hits.pop("/down.jpg", None)
    err = _refused(_fetcher(server, retries=1), f"http://{server}/down.jpg", "HTTP 502")
    assert err.transient and _Handler.hits["/down.jpg"] == 2  # one try + one retry
    assert "2 attempts" in str(err)


def test_a_slow_server_times_out(server: str, connections: list[str]) -> None:
    _Handler.hits.pop("/slow.jpg", None)
    t0 = time.monotonic()
    err = _refused(_fetcher(server, retries=1), f"http://{server}/slow.jpg", "timed out")
    assert err.transient and _Handler.hits["/slow.jpg"] == 2
    assert time.monotonic() - t0 < 2.5  # two 0.5 s read timeouts, not the server's 3 s


def test_total_deadline(server: str, connections: list[str]) -> None:
    fetcher = _fetcher(server, timeout_s=10, total_s=0.3, retries=0)
    _refused(fetcher, f"http://{server}/slow.jpg", "timed out")


def test_declared_oversize_is_refused_before_reading(server: str, connections: list[str]) -> None:
    err = _refused(_fetcher(server), f"http://{server}/big-declared.jpg", "too large")
    assert "Content-Length" in str(err) and not err.transient


def test_streamed_oversize_is_cut_at_the_limit(server: str, connections: list[str]) -> None:
    err = _refused(_fetcher(server), f"http://{server}/big-stream.jpg", "too large")
    assert f"more than {LIMIT} bytes" in str(err) and not err.transient


def test_redirect_loop(server: str, connections: list[str]) -> None:
    _Handler.hits.pop("/loop", None)
    _refused(_fetcher(server, max_redirects=3), f"http://{server}/loop", "too many redirects")
    assert _Handler.hits["/loop"] == 4  # the first request and 3 redirects, no retry


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/to-metadata", "cloud metadata"),
        ("/to-loopback2", "loopback"),
        ("/to-decimal", "non-canonical"),  # 2130706433 is the allowed 127.0.0.1, written oddly
        ("/to-ftp", "scheme"),
    ],
)
def test_redirect_to_a_blocked_address(
    server: str, connections: list[str], path: str, words: str
) -> None:
    err = _refused(_fetcher(server), f"http://{server}{path}", words)
    assert "redirect" in str(err) and not err.transient
    assert connections == ["127.0.0.1"]  # only the first hop connected


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/html-as-jpeg.jpg", "not an image"),  # image/jpeg, but the bytes are HTML
        ("/page.html", "content type"),
        ("/jpeg-as-html", "content type"),
    ],
)
def test_non_image_content(server: str, connections: list[str], path: str, words: str) -> None:
    err = _refused(_fetcher(server), f"http://{server}{path}", words)
    assert not err.transient


@pytest.mark.parametrize("addr", ["10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "fe80::1"])
def test_names_resolving_to_blocked_ranges_are_refused_without_connecting(
    connections: list[str], addr: str
) -> None:
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return [addr]

    fetcher = ImageFetcher(max_bytes=LIMIT, resolver=resolver, retries=2, backoff_s=0.01)
    err = _refused(fetcher, "http://images.example.com/a.jpg", "images.example.com")
    assert str(ipaddress.ip_address(addr)) in str(err) and not err.transient
    assert asked == [("images.example.com", 80)] and connections == []


def test_one_blocked_address_among_many_refuses_the_name(connections: list[str]) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.1"]

    fetcher = ImageFetcher(max_bytes=LIMIT, resolver=resolver)
    _refused(fetcher, "https://cdn.example.com/a.jpg", "private")
    assert connections == []


def test_the_vetted_address_is_pinned(server: str, connections: list[str]) -> None:
    """A name is resolved once per hop, by the fetcher; the connection uses that answer (a
    second lookup that would rebind the name to another address never happens)."""
    port = int(server.rsplit(":", 1)[1])
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])
    asked: list[str] = []

    async def rebinding(host: str, p: int) -> list[str]:
        asked.append(host)
        return next(answers)

    fetcher = ImageFetcher(
        max_bytes=LIMIT, resolver=rebinding, allow=parse_allow(f"pics.test:{port}")
    )
    assert _fetch(fetcher, f"http://pics.test:{port}/ok.jpg") == JPEG
    assert asked == ["pics.test"] and connections == ["127.0.0.1"]


def test_unresolvable_name(connections: list[str]) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    fetcher = ImageFetcher(max_bytes=LIMIT, resolver=resolver, retries=1, backoff_s=0.01)
    err = _refused(fetcher, "http://nowhere.invalid/a.jpg", "cannot resolve")
    assert err.transient and connections == []


def test_connection_refused_is_transient(connections: list[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetcher = ImageFetcher(
        max_bytes=LIMIT, allow=parse_allow(f"127.0.0.1:{port}"), retries=1, backoff_s=0.01
    )
    err = _refused(fetcher, f"http://127.0.0.1:{port}/a.jpg", "connect")
    assert err.transient and connections == ["127.0.0.1", "127.0.0.1"]


def test_concurrency_is_bounded(server: str, connections: list[str], monkeypatch) -> None:
    fetcher = _fetcher(server, concurrency=2)
    active = peak = 0
    original = ImageFetcher._attempt

    async def counting(self, url: str) -> bytes:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.05)
            return await original(self, url)
        finally:
            active -= 1

    monkeypatch.setattr(ImageFetcher, "_attempt", counting)

    async def many() -> list[bytes]:
        return await asyncio.gather(*(fetcher.fetch(f"http://{server}/ok.jpg") for _ in range(6)))

    assert asyncio.run(many()) == [JPEG] * 6
    assert peak == 2


def test_from_section() -> None:
    s = Settings(
        image_fetch_allow_hosts="127.0.0.1:9, 10.0.0.0/8",
        image_fetch_timeout_s=3,
        image_fetch_max_redirects=1,
        image_fetch_concurrency=4,
        image_fetch_retries=0,
        max_image_bytes=1234,
    )
    f = ImageFetcher.from_section(s.images, s.encoder.max_image_bytes)
    assert (f.max_bytes, f.timeout_s, f.max_redirects, f.concurrency, f.retries) == (
        1234,
        3,
        1,
        4,
        0,
    )
    assert len(f.allow) == 2
    with pytest.raises(ValueError):
        Settings(image_fetch_allow_hosts="not a host")
