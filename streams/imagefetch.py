"""Product images by URL: a guarded HTTP(S) fetcher for the encode agent.

Policy (pure, :func:`refusal`, :func:`check_url`): only http and https, no credentials in the
URL; loopback, private, carrier-grade NAT, link-local, multicast, reserved, unspecified and
cloud metadata addresses are refused, also when written as IPv4-mapped, NAT64 or 6to4 IPv6, or
as decimal/hex/octal IPv4 literals (``http://2130706433/``, ``http://0x7f.1/``; such
non-canonical literals are refused whatever they denote). An allowlist
(``VREC_IMAGE_FETCH_ALLOW_HOSTS``: ``host``, ``host:port`` or CIDR entries) opens chosen hosts
even if private; cloud metadata addresses stay closed whatever it says.

:class:`ImageFetcher` resolves each hop's host itself, refuses the name if any of its addresses
is refused, and connects only to the addresses it vetted (a resolver that answers nothing else),
so a second DNS answer cannot move the connection (DNS rebinding). Redirects are followed by
hand, each target checked the same way, at most ``max_redirects``. Connect and read timeouts, a
deadline per attempt, a byte limit (Content-Length checked first, the stream cut at the limit),
an ``image/*`` content type and the magic bytes of a format the decoder accepts are required.
At most ``concurrency`` fetches run at once; 5xx answers, timeouts and connection errors are
retried with exponential backoff, 4xx answers and policy refusals never.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

if TYPE_CHECKING:
    from streams.settings import ImageSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``await resolver(host, port)`` -> the host's addresses as strings.
Resolver = Callable[[str, int], Awaitable[list[str]]]

SCHEMES = ("http", "https")
MAX_URL_CHARS = 2048
REDIRECTS = (301, 302, 303, 307, 308)
#: Cloud instance metadata services (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS IPv6:
#: fd00:ec2::254; Alibaba: 100.100.100.200); refused even when the allowlist covers them.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_IPV4_PART = re.compile(r"^(0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*)$", re.IGNORECASE)


class FetchError(ValueError):
    """An image URL that could not or must not be fetched; ``transient``: worth retrying."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class AllowRule:
    """One allowlist entry: a network (CIDR or an IP) or a host name, optionally one port."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    host: str | None = None
    port: int | None = None

    def matches(self, addr: IPAddress, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return addr.version == self.network.version and addr in self.network
        return self.host == _norm_host(host)


def _norm_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def parse_allow(text: str) -> tuple[AllowRule, ...]:
    """Rules from a comma-separated allowlist: ``host``, ``host:port``, ``1.2.3.4[:port]``,
    ``[v6][:port]``, a bare IPv6 address, or a CIDR. Raises ValueError for a malformed entry."""
    rules: list[AllowRule] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            rules.append(_parse_rule(entry))
        except ValueError as exc:
            raise ValueError(f"bad image fetch allowlist entry {entry!r}: {exc}") from None
    return tuple(rules)


def _parse_rule(entry: str) -> AllowRule:
    if "/" in entry:
        return AllowRule(network=ipaddress.ip_network(entry, strict=False))
    if entry.count(":") > 1 and not entry.startswith("["):  # a bare IPv6 address
        return AllowRule(network=ipaddress.ip_network(entry))
    host, port = entry, None
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0 or (entry[end + 1 :] and not entry[end + 1 :].startswith(":")):
            raise ValueError("unclosed [")
        host, rest = entry[1:end], entry[end + 1 :]
        port = _port(rest[1:]) if rest else None
    elif ":" in entry:
        host, _, p = entry.partition(":")
        port = _port(p)
    if not host or not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
        raise ValueError("not a host name or address")
    addr = parse_ip_host(host)
    if addr is not None:
        return AllowRule(network=ipaddress.ip_network(addr), port=port)
    return AllowRule(host=_norm_host(host), port=port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def parse_ip_host(host: str) -> IPAddress | None:
    """The address a URL host denotes if it is an IP literal, in any form ``inet_aton``
    accepts (``127.1``, ``2130706433``, ``0x7f.1``, ``0177.0.0.1``; a trailing dot) or IPv6
    (brackets and a zone id allowed); None for a host name."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h.split("%", 1)[0])
        except ValueError:
            return None
    h = h[:-1] if h.endswith(".") else h
    parts = h.split(".")
    if not h or len(parts) > 4 or not all(_IPV4_PART.match(p) for p in parts):
        return None
    values = []
    for p in parts:
        if p[:2].lower() == "0x":
            values.append(int(p[2:] or "0", 16))
        elif len(p) > 1 and p[0] == "0":
            values.append(int(p, 8))
        else:
            values.append(int(p))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number << 8 | v
    return ipaddress.IPv4Address(number << 8 * (4 - len(head)) | last)


def _embedded_v4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64 or 6to4), if any."""
    if isinstance(addr, ipaddress.IPv4Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def _kind(addr: IPAddress) -> str | None:
    """Why ``addr`` is not a public address (checked in this order), or None."""
    if addr in METADATA:
        return "a cloud metadata address"
    for attr, words in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
        ("is_site_local", "site-local"),
    ):
        if getattr(addr, attr, False):
            return f"a {words} address"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT:
        return "not globally routable (carrier-grade NAT)"
    if not addr.is_global:
        return "not globally routable"
    return None


def refusal(
    addr: IPAddress, host: str = "", port: int = 0, allow: Sequence[AllowRule] = ()
) -> str | None:
    """Why the fetcher must not connect to ``addr`` (resolved from URL ``host``, ``port``), or
    None. An allowlist rule matching the address or the host (and port) opens it, except for
    cloud metadata addresses. Pure."""
    inner = _embedded_v4(addr)
    if addr in METADATA or inner in METADATA:
        return f"{addr} is a cloud metadata address"
    if any(rule.matches(a, host, port) for rule in allow for a in (addr, inner) if a):
        return None
    if inner is not None:  # only the IPv4 address it carries counts
        why = _kind(inner)
        return None if why is None else f"{addr} is {why} (it carries {inner})"
    why = _kind(addr)
    return None if why is None else f"{addr} is {why}"


def check_url(url: str, allow: Sequence[AllowRule] = ()) -> str | None:
    """Why ``url`` is refused before any DNS lookup (scheme, credentials, no host, a refused IP
    literal), or None: then its host name still has to resolve to allowed addresses. Pure."""
    try:
        u = URL(url)
    except (ValueError, TypeError) as exc:
        return f"not a valid URL: {exc}"
    if u.scheme not in SCHEMES:
        return f"scheme {u.scheme or '(none)'!r} is not allowed (http, https only)"
    if u.user is not None or u.password is not None:
        return "credentials in the URL are not allowed"
    host = u.raw_host or ""
    if not host:
        return "the URL has no host"
    addr = parse_ip_host(host)
    if addr is None:
        return None
    if isinstance(addr, ipaddress.IPv4Address) and host != str(addr):
        why = refusal(addr) or "only dotted-decimal IPv4 literals are fetched"
        return f"host {host} is a non-canonical IPv4 literal: {why}"
    why = refusal(addr, host, u.port or 0, allow)
    return None if why is None else f"host {host}: {why}"


def sniff_image(head: bytes) -> str | None:
    """The image format the first bytes announce (those the decoder accepts), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\0", b"MM\0*"):
        return "TIFF"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (getaddrinfo), without zone ids."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


class ImageFetcher:
    """Fetches image bytes from http(s) URLs under the policy above; see the module doc."""

    def __init__(
        self,
        *,
        max_bytes: int,
        allow: Sequence[AllowRule] = (),
        timeout_s: float = 10.0,
        total_s: float = 30.0,
        max_redirects: int = 5,
        concurrency: int = 8,
        retries: int = 2,
        backoff_s: float = 0.5,
        resolver: Resolver | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.allow = tuple(allow)
        self.timeout_s = timeout_s
        self.total_s = total_s
        self.max_redirects = max_redirects
        self.concurrency = concurrency
        self.retries = retries
        self.backoff_s = backoff_s
        self.resolver: Resolver = resolver or system_resolver
        self._slots = asyncio.Semaphore(concurrency)

    @classmethod
    def from_section(cls, images: ImageSettings, max_bytes: int) -> ImageFetcher:
        """A fetcher for ``Settings.images``; max_bytes: ``Settings.encoder.max_image_bytes``."""
        return cls(
            max_bytes=max_bytes,
            allow=parse_allow(images.fetch_allow_hosts),
            timeout_s=images.fetch_timeout_s,
            total_s=images.fetch_total_s,
            max_redirects=images.fetch_max_redirects,
            concurrency=images.fetch_concurrency,
            retries=images.fetch_retries,
        )

    async def fetch(self, url: str) -> bytes:
        """The image bytes at ``url``; raises :class:`FetchError` with the reason."""
        attempt = 0
        while True:
            try:
                async with self._slots:
                    return await self._attempt(url)
            except FetchError as exc:
                if not exc.transient or attempt >= self.retries:
                    if attempt:
                        raise FetchError(
                            f"{exc} (after {attempt + 1} attempts)", transient=exc.transient
                        ) from None
                    raise
            attempt += 1
            await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))

    async def _attempt(self, url: str) -> bytes:
        """One try: the redirect chain from ``url`` within the deadline."""
        try:
            async with asyncio.timeout(self.total_s):
                return await self._follow(url)
        except TimeoutError:
            raise FetchError(
                f"timed out after {self.total_s:g} s (the whole fetch)", transient=True
            ) from None

    async def _follow(self, url: str) -> bytes:
        current = url
        for hop in range(self.max_redirects + 1):
            where = "" if hop == 0 else f"redirect to {current}: "
            if len(current) > MAX_URL_CHARS:
                raise FetchError(f"{where}URL longer than {MAX_URL_CHARS} characters")
            why = check_url(current, self.allow)
            if why is not None:
                raise FetchError(f"{where}refused: {why}")
            u = URL(current)
            addrs = await self._vet(u, where)
            location = await self._get(u, addrs)
            if isinstance(location, bytes):
                return location
            try:
                current = str(u.join(URL(location)))
            except (ValueError, TypeError):
                raise FetchError(f"bad redirect Location {location[:200]!r}") from None
        raise FetchError(f"too many redirects (more than {self.max_redirects})")

    async def _vet(self, u: URL, where: str) -> list[IPAddress]:
        """The addresses of the URL's host, each allowed; the connection may use no other."""
        host, port = u.raw_host, u.port or 0
        literal = parse_ip_host(host)
        if literal is not None:
            return [literal]  # check_url vetted it
        try:
            answers = await self.resolver(host, port)
        except OSError as exc:
            raise FetchError(f"{where}cannot resolve {host}: {exc}", transient=True) from None
        addrs: list[IPAddress] = []
        for text in answers:
            try:
                addrs.append(ipaddress.ip_address(text.split("%", 1)[0]))
            except ValueError:
                raise FetchError(f"{where}{host} resolved to a non-address {text!r}") from None
        if not addrs:
            raise FetchError(f"{where}cannot resolve {host}: no address", transient=True)
        for addr in addrs:
            why = refusal(addr, host, port, self.allow)
            if why is not None:
                raise FetchError(f"{where}refused: {host} resolves to {addr}: {why}")
        return addrs

    async def _get(self, u: URL, addrs: list[IPAddress]) -> bytes | str:
        """GET ``u`` connecting only to ``addrs``: the body, or a redirect's Location."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout_s, sock_connect=self.timeout_s,
            sock_read=self.timeout_s,
        )  # fmt: skip
        connector = aiohttp.TCPConnector(
            resolver=_PinnedResolver(u.raw_host, addrs),
            use_dns_cache=False,
            force_close=True,
        )
        headers = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "vrec"}
        try:
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,
                trust_env=False,  # no proxy from the environment: it would skip the pinning
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            async with session, session.get(u, headers=headers, allow_redirects=False) as resp:
                return await self._read(resp)
        except FetchError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise FetchError(
                f"timed out (no answer within {self.timeout_s:g} s)", transient=True
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise FetchError(
                f"cannot connect to {u.host}: {exc.os_error}", transient=True
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError(
                f"connection error: {type(exc).__name__}: {exc}", transient=True
            ) from None

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes | str:
        status = resp.status
        if status in REDIRECTS:
            location = resp.headers.get("Location")
            if not location:
                raise FetchError(f"HTTP {status} redirect without a Location")
            return location
        if status >= 500:
            raise FetchError(f"HTTP {status} from {resp.url}", transient=True)
        if status != 200:
            raise FetchError(f"HTTP {status} from {resp.url}")
        ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if not ctype.startswith("image/"):
            raise FetchError(f"content type {ctype or '(none)'!r} is not image/*")
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchError(f"content encoding {encoding!r} is not allowed")
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(
                f"image too large: Content-Length {declared} > limit {self.max_bytes} bytes"
            )
        body = bytearray()
        sniffed = False
        async for chunk in resp.content.iter_chunked(65536):
            body += chunk
            if len(body) > self.max_bytes:
                raise FetchError(f"image too large: more than {self.max_bytes} bytes")
            if not sniffed and len(body) >= 12:
                self._check_magic(bytes(body[:12]), ctype)
                sniffed = True
        if not sniffed:
            self._check_magic(bytes(body), ctype)
        return bytes(body)

    @staticmethod
    def _check_magic(head: bytes, ctype: str) -> None:
        if sniff_image(head) is None:
            raise FetchError(
                f"body is not an image (content type {ctype}, but no JPEG/PNG/WebP/GIF/BMP/TIFF "
                "signature)"
            )


class _PinnedResolver(AbstractResolver):
    """An aiohttp resolver that answers only the vetted host, with only its vetted addresses."""

    def __init__(self, host: str, addrs: Sequence[IPAddress]) -> None:
        self.host = _norm_host(host)
        self.addrs = list(addrs)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if _norm_host(host) != self.host:
            raise OSError(f"{host} was not vetted")
        return [
            ResolveResult(
                hostname=host,
                host=str(a),
                port=port,
                family=socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addrs
        ]

    async def close(self) -> None:
        return None
