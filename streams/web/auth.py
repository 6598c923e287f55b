"""Who may use the worker's web server: bearer tokens for writes, optionally for reads.

* Writes (any method but GET/HEAD/OPTIONS, except the read-only ``POST /search/image``) need
  ``Authorization: Bearer <token>`` with one of ``VREC_WEB_TOKEN``'s comma-separated tokens.
  Without a configured token they are refused (403) unless ``VREC_WEB_OPEN_WRITES=true``.
* Reads are open unless ``VREC_WEB_AUTH_READS=true``; ``/health`` always is (probes).
* Faust's own pages (``/router``, ``/table``, ...; served only with ``VREC_WEB_DEBUG_PAGES``)
  always need a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from streams.settings import WebSettings

__all__ = ["DEBUG_PREFIXES", "check_access", "middleware", "token_matches"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY_POSTS = frozenset({"/search/image"})  # a POST that changes nothing
OPEN_PATHS = frozenset({"/health"})
#: Faust's built-in blueprints (the stats blueprint is moved to /faust, see streams.web).
DEBUG_PREFIXES = ("/router", "/table", "/graph", "/performance", "/faust")

NO_TOKEN = (
    "write endpoints are disabled: no web token is configured "
    "(set VREC_WEB_TOKEN, or VREC_WEB_OPEN_WRITES=true to open them without one)"
)
NEEDS_TOKEN = "this endpoint needs an 'Authorization: Bearer <token>' header with a valid token"


def token_matches(authorization: str | None, tokens: Sequence[str]) -> bool:
    """Whether an Authorization header carries one of ``tokens`` (constant-time compare)."""
    if not authorization or not tokens:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    given_b = given.strip().encode()
    ok = False
    for token in tokens:  # compare with every token: the time does not tell which one matched
        ok |= hmac.compare_digest(given_b, token.encode())
    return ok


def _is_debug(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in DEBUG_PREFIXES)


def check_access(
    method: str, path: str, authorization: str | None, web_settings: WebSettings
) -> tuple[int, str] | None:
    """None when the request may go on, else the (status, message) to refuse it with."""
    tokens = web_settings.tokens
    authed = token_matches(authorization, tokens)
    write = method.upper() not in SAFE_METHODS and path not in READ_ONLY_POSTS
    if _is_debug(path):
        if authed:
            return None
        return (403, NO_TOKEN) if not tokens else (401, NEEDS_TOKEN)
    if write:
        if authed or (not tokens and web_settings.open_writes):
            return None
        return (403, NO_TOKEN) if not tokens else (401, NEEDS_TOKEN)
    if not web_settings.auth_reads or path in OPEN_PATHS or authed:
        return None
    if not tokens:
        return 403, "reads need a token (VREC_WEB_AUTH_READS) but VREC_WEB_TOKEN is not set"
    return 401, NEEDS_TOKEN


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(web_settings: WebSettings) -> Callable[[web.Request, Handler], Awaitable]:
    """An aiohttp middleware applying :func:`check_access` to every request of the server."""

    @web.middleware
    async def vrec_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        denied = check_access(
            request.method, request.path, request.headers.get("Authorization"), web_settings
        )
        if denied is None:
            return await handler(request)
        status, message = denied
        headers = {"WWW-Authenticate": 'Bearer realm="vrec"'} if status == 401 else None
        return web.json_response({"error": message}, status=status, headers=headers)

    return vrec_auth
