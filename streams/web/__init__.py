"""The worker's web server (Faust's aiohttp server, ``VREC_WEB_ENABLED=true``): API, pages, metrics.

JSON API
    GET  /health                          ok, model id, store count
    GET  /users/{user_id}/recommendations the user's list computed now from the users table
                                          (trending for an unknown user), with reasons
    GET  /items/{item_id}/similar?k=12    visual neighbours from the store, the item left out
    GET  /items/{item_id}/image           the item's image file, re-read inside the image roots
    POST /items                           JSON ProductUpload or multipart image + fields -> 202
                                          (needs the write token: streams/web/auth.py)
    POST /search/image?k=12               an uploaded image -> nearest items
    GET  /metrics                         Prometheus exposition (streams.metrics)
Pages
    GET  /                                search by image, add a product, a few links
    GET  /users/{user_id}                 recent activity + live recommendations (polls the API)
    GET  /items/{item_id}                 the item and visually similar items

A worker answers from its own table partitions: the recommendations API forwards a request to
the worker owning the user's partition (Faust's router) when that is another worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable

from streams import metrics as vrec_metrics
from streams.web import auth, pages
from streams.web.service import HttpError, WebService, parse_k

if TYPE_CHECKING:
    from streams.app import VrecApp

log = logging.getLogger(__name__)

__all__ = ["register"]

_PRODUCTION_INDEX = "faust.web.apps.production_index:blueprint"
_STATS = "faust.web.apps.stats:blueprint"
_FIELD_LIMIT = 64 * 1024


def _free_root(web: Any) -> None:
    """Faust mounts its own index at "/"; drop it (stats, when enabled, move to /faust).

    Blueprints are applied when the server starts, so editing the list before that suffices.
    """
    enabled = getattr(web.blueprints, "_enabled", None)
    if enabled is None:  # another Faust: our "/" view wins or aiohttp reports the clash
        log.warning("cannot free '/' from Faust's index page on this Faust version")
        return
    web.blueprints._enabled = [
        ("/faust" if bp == _STATS and prefix == "" else prefix, bp)
        for prefix, bp in enabled
        if bp != _PRODUCTION_INDEX
    ]


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413)."""
    data = bytearray()
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            raise HttpError(413, f"request body over {limit} bytes")


async def _read_multipart(request: Any, limit: int) -> tuple[dict[str, str], dict[str, bytes]]:
    """Form fields and files of a multipart body, each file at most ``limit`` bytes."""
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            break
        if not hasattr(part, "read_chunk"):
            raise HttpError(400, "nested multipart bodies are not accepted")
        cap = limit if part.filename is not None else _FIELD_LIMIT
        data = bytearray()
        while True:
            chunk = await part.read_chunk(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > cap:
                raise HttpError(413, f"field {part.name!r} over {cap} bytes")
        if part.filename is not None:
            files[part.name or ""] = bytes(data)
        else:
            fields[part.name or ""] = data.decode("utf-8", "replace")
    return fields, files


def _same_origin(request: Any) -> None:
    """Refuse uploads a browser sends from another site (a form POST needs no preflight)."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise HttpError(403, "cross-origin upload refused")


def _is_multipart(request: Any) -> bool:
    return (request.content_type or "").startswith("multipart/")


def register(vrec: VrecApp) -> None:
    """Add vrec's views and ``/metrics`` to the Faust app's web server."""
    app = vrec.app
    metrics = vrec_metrics.install(vrec)
    svc = WebService(vrec)
    settings = vrec.runtime.settings
    max_image = settings.max_image_bytes
    _free_root(app.web)
    # every request, Faust's own pages included, passes the token check (streams/web/auth.py)
    app.web.web_app.middlewares.append(auth.middleware(settings.web))

    class Base(View):
        """JSON errors for :class:`HttpError`; a logged 500 for anything else."""

        async def answer(self, make: Callable[[], Awaitable[Response]]) -> Response:
            try:
                return await make()
            except HttpError as exc:
                return self.json({"error": exc.message}, status=exc.status)
            except Exception:
                log.exception("web request failed")
                return self.json({"error": "internal error"}, status=500)

        def html_page(self, text: str) -> Response:
            return self.html(text, headers={"Content-Security-Policy": pages.CSP})

    @app.page("/health", name="vrec_health")
    class Health(Base):
        async def get(self, request: Request) -> Response:
            async def make() -> Response:
                body = await svc.health()
                return self.json(body, status=200 if body["ok"] else 503)

            return await self.answer(make)

    @app.page("/metrics", name="vrec_metrics")
    class Metrics(Base):
        async def get(self, request: Request) -> Response:
            async def make() -> Response:
                rt = vrec.runtime
                if rt.store is not None:
                    metrics.store_items.set(await rt.in_store(rt.store.count))
                body, ctype = metrics.render(request.headers.get("Accept", ""))
                return self.bytes(body, headers={"Content-Type": ctype})

            return await self.answer(make)

    @app.page("/users/{user_id}/recommendations", name="vrec_user_recommendations")
    class UserRecommendations(Base):
        async def get(self, request: Request, user_id: str) -> Response:
            try:  # the worker that owns the user's partition answers
                return await app.router.route_req(
                    vrec.tables.users.name, user_id.encode(), self.web, request
                )
            except SameNode:
                pass
            except (ServiceUnavailable, KeyError):
                pass  # no assignment known yet: answer from what this worker has
            except Exception:  # noqa: BLE001 - the owner did not answer: say so
                log.warning("routing %r to its worker failed", user_id, exc_info=True)
                return self.json(
                    {"error": "the worker owning this user is unreachable"}, status=503
                )
            return await self.answer(
                lambda: _json(self, svc.recommendations(user_id), cache="no-store")
            )

    @app.page("/items/{item_id}/similar", name="vrec_item_similar")
    class ItemSimilar(Base):
        async def get(self, request: Request, item_id: str) -> Response:
            async def make() -> Response:
                k = parse_k(request.query.get("k"), settings.top_k)
                return self.json(await svc.similar(item_id, k))

            return await self.answer(make)

    @app.page("/items/{item_id}/image", name="vrec_item_image")
    class ItemImage(Base):
        async def get(self, request: Request, item_id: str) -> Response:
            async def make() -> Response:
                if request.query_string:
                    raise HttpError(400, "this endpoint takes no parameters")
                data, ctype = await svc.item_image(item_id)
                return self.bytes(
                    data,
                    content_type=ctype,
                    headers={
                        "Cache-Control": "public, max-age=300",
                        "X-Content-Type-Options": "nosniff",
                    },
                )

            return await self.answer(make)

    @app.page("/items", name="vrec_items")
    class Items(Base):
        async def post(self, request: Request) -> Response:
            async def make() -> Response:
                _same_origin(request)
                if _is_multipart(request):
                    fields, files = await _read_multipart(request, max_image)
                    image = files.get("image")
                    if image is None:
                        raise HttpError(400, "multipart upload needs a file field 'image'")
                    body = await svc.upload(fields, image)
                else:
                    raw = await _read_body(request, max_image * 4 // 3 + _FIELD_LIMIT)
                    try:
                        doc = json.loads(raw)
                    except ValueError as exc:
                        raise HttpError(400, f"invalid JSON: {exc}") from None
                    if not isinstance(doc, dict):
                        raise HttpError(400, "expected a JSON object (a ProductUpload)")
                    body = await svc.upload(doc)
                return self.json(body, status=202)

            return await self.answer(make)

    @app.page("/search/image", name="vrec_search_image")
    class SearchImage(Base):
        async def post(self, request: Request) -> Response:
            async def make() -> Response:
                _same_origin(request)
                k = parse_k(request.query.get("k"), settings.top_k)
                if _is_multipart(request):
                    _, files = await _read_multipart(request, max_image)
                    data = files.get("image") or next(iter(files.values()), b"")
                else:
                    data = await _read_body(request, max_image)
                return self.json(await svc.search_image(data, k))

            return await self.answer(make)

    @app.page("/users/{user_id}", name="vrec_user_page")
    class UserPage(Base):
        async def get(self, request: Request, user_id: str) -> Response:
            api = f"/users/{quote(user_id, safe='')}/recommendations"
            return self.html_page(pages.user_page(user_id, api))

    @app.page("/items/{item_id}", name="vrec_item_page")
    class ItemPage(Base):
        async def get(self, request: Request, item_id: str) -> Response:
            async def make() -> Response:
                k = parse_k(request.query.get("k"), settings.top_k)
                api = f"/items/{quote(item_id, safe='')}/similar?k={k}"
                return self.html_page(pages.item_page(item_id, api, k))

            return await self.answer(make)

    @app.page("/", name="vrec_index")
    class Index(Base):
        async def get(self, request: Request) -> Response:
            async def make() -> Response:
                users = svc.sample_users()
                trending = await svc.trending_items()
                return self.html_page(pages.index_page(users, trending))

            return await self.answer(make)

    @app.page("/static/vrec.css", name="vrec_css")
    class Css(Base):
        async def get(self, request: Request) -> Response:
            return self.text(
                pages.CSS, content_type="text/css", headers={"Cache-Control": "max-age=60"}
            )

    @app.page("/static/vrec.js", name="vrec_js")
    class Js(Base):
        async def get(self, request: Request) -> Response:
            return self.text(
                pages.JS,
                content_type="application/javascript",
                headers={"Cache-Control": "max-age=60"},
            )


async def _json(view: View, body: Awaitable[dict], cache: str | None = None) -> Response:
    headers = {"Cache-Control": cache} if cache else None
    return view.json(await body, headers=headers)
