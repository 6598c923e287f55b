"""What the web views answer, apart from the web framework: plain dicts from the worker's state.

Everything blocking runs where the agents run it: the vector store on its one thread
(``rt.in_store``), image decoding in the decode pool, ONNX in the encoder thread, file reads in
the loop's default executor. Table reads happen on the event loop (the agents' loop), so they see
the state the users agent last wrote.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import os
import re
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from pydantic import ValidationError

from streams.deadletters import describe
from streams.events import ProductUpload
from streams.experiment import from_settings as experiment_from_settings
from streams.ranking import Reason, Scored, Trending, top_trending
from streams.ranking.copurchase import CoPurchase
from streams.recommend import RankContext, rank_one, variant_configs
from streams.userstate import UserState

if TYPE_CHECKING:
    from streams.app import VrecApp

ITEM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HISTORY_SHOWN = 12  # recent events on the user page
MAX_K = 100

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
_EXT = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
    "image/webp": ".webp",
}


class HttpError(Exception):
    """An error answer: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def sniff_image_type(data: bytes) -> str | None:
    """MIME type of an image from its magic bytes (None: not an image format we serve)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, ctype in _MAGIC:
        if data.startswith(magic):
            return ctype
    return None


def image_url(item_id: str) -> str:
    return f"/items/{quote(item_id, safe='')}/image"


def item_url(item_id: str) -> str:
    return f"/items/{quote(item_id, safe='')}"


def user_url(user_id: str) -> str:
    return f"/users/{quote(user_id, safe='')}"


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives ``key``."""
    if partitions <= 1:
        return 0
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def parse_k(raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        k = int(raw)
    except ValueError:
        raise HttpError(400, f"k must be an integer, got {raw!r}") from None
    if not 1 <= k <= MAX_K:
        raise HttpError(400, f"k must be between 1 and {MAX_K}")
    return k


def explain(
    item: Scored, bought: Collection[str], titles: Mapping[str, str]
) -> tuple[str, dict | None]:
    """A readable reason for one recommended item and the user's item behind it (the ranker's
    ``because``, streams/ranking/reasons.py): "because you bought X", "similar to X you
    viewed", "bought together with X", "same product as X", "bought before", "trending now".
    """
    reason, because = item.reason, item.because
    if reason is Reason.TRENDING:
        return "trending now", None
    if because is None:
        return ("visually similar to your taste" if reason is Reason.VISUAL else reason.text), None
    title = titles.get(because) or because
    kind = "purchase" if because in bought else "view"
    if reason is Reason.VISUAL:
        text = (
            f"because you bought {title}"
            if kind == "purchase"
            else f"similar to {title} you viewed"
        )
    elif reason is Reason.SIBLING:
        text = f"same product as {title}"
    elif reason is Reason.COPURCHASE:
        text = f"bought together with {title}"
    else:
        text = reason.text
    return text, {"item_id": because, "title": title, "kind": kind}


def _item_fields(item_id: str, payload: Mapping[str, Any] | None) -> dict[str, Any]:
    p = payload or {}
    return {
        "item_id": item_id,
        "title": p.get("title") or "",
        "category": p.get("category"),
        "product_code": p.get("product_code"),
        "image_url": image_url(item_id),
        "url": item_url(item_id),
    }


def _read_image_file(
    name: str, roots: Sequence[Path], max_bytes: int, max_pixels: int
) -> tuple[bytes, str]:
    """The bytes of the item's image file, read now inside ``roots`` (no symlink or folder
    swapped in since indexing can point it elsewhere), and the MIME type of the decoded image."""
    from encoders import ImageError
    from encoders.preprocess import image_mime, read_confined

    try:
        data = read_confined(name, roots, max_bytes)
        return data, image_mime(data, max_pixels=max_pixels)
    except ImageError:
        raise HttpError(404, "the item's image is not available") from None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return  # content-addressed: same name, same bytes
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class WebService:
    """The worker's state as the web API shows it."""

    def __init__(self, vrec: VrecApp) -> None:
        self.vrec = vrec
        self.rt = vrec.runtime
        self.settings = vrec.runtime.settings
        self.tables = vrec.tables
        self.topics = vrec.topics
        self.experiment = experiment_from_settings(self.settings)
        self.rank_configs = variant_configs(self.settings, self.experiment)

    # -- health ----------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        rt = self.rt
        ready = rt.store is not None and rt.encoder is not None
        count = await rt.in_store(rt.store.count) if rt.store is not None else 0
        return {
            "ok": ready,
            "app_id": self.settings.app_id,
            "model_id": rt.model_id,
            "store": self.settings.store,
            "store_count": count,
        }

    # -- store helpers -----------------------------------------------------------------------
    async def _search(
        self, unit: np.ndarray, limit: int, exclude: frozenset[str]
    ) -> list[tuple[str, np.ndarray]]:
        rt = self.rt
        hits = await rt.in_store(rt.store.search, unit, limit, exclude=exclude, with_vectors=True)
        return [(h.item_id, h.vector) for h in hits]

    async def _lookup(
        self, ids: Sequence[str], *, vectors: bool
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        store = self.rt.store
        ids = list(dict.fromkeys(ids))

        def work() -> tuple[dict[str, np.ndarray], dict[str, dict]]:
            return (store.get(ids) if vectors else {}), store.get_payloads(ids)

        if not ids:
            return {}, {}
        return await self.rt.in_store(work)

    def trending(self, partition: int) -> Trending:
        """The trending counts of a user-events partition, without touching the agent's mirror."""
        parts = self.rt.partitions
        if parts.loaded:
            return parts.trending(partition)
        # The users agent rebuilds its mirror at its next batch; meanwhile read the table.
        return parts.read_trending(self.tables.trending, partition)

    # -- users -------------------------------------------------------------------------------
    async def recommendations(self, user_id: str) -> dict[str, Any]:
        """The user's list, computed now from the users table (trending for an unknown user)."""
        s = self.settings
        key = user_id.encode()
        partition = partition_for(key, s.partitions)
        raw = self.tables.users.get(key)
        state = UserState.from_bytes(raw) if raw else None
        trending = self.trending(partition)
        variant = self.experiment.assign(user_id) if self.experiment is not None else ""
        ranked: list[Scored]
        if state is not None:
            parts = self.rt.partitions
            copurchase = parts.get(partition).copurchase if parts.loaded else CoPurchase()
            ctx = RankContext(
                self.rank_configs[variant],
                trending=trending,
                copurchase=copurchase,
                catalogue=self.rt.catalogue,
            )
            ranked, strategy = await rank_one(state, ctx, self._search)
        else:
            ranked, strategy = top_trending(trending, s.top_k), "trending"
        history = list(reversed(state.history))[:HISTORY_SHOWN] if state is not None else []
        bought = {h.item_id for h in state.history if h.kind == "purchase"} if state else set()
        _, payloads = await self._lookup(
            [r.item_id for r in ranked]
            + [h.item_id for h in history]
            + [r.because for r in ranked if r.because is not None],
            vectors=False,
        )
        titles = {i: p.get("title") or "" for i, p in payloads.items()}
        items = []
        for r in ranked:
            text, because = explain(r, bought, titles)
            items.append(
                {
                    **_item_fields(r.item_id, payloads.get(r.item_id)),
                    "score": float(r.score),
                    "reason": r.reason,
                    "reason_text": text,
                    "because": because,
                }
            )
        return {
            "user_id": user_id,
            "known": state is not None,
            "n_events": 0 if state is None else state.n_events,
            "strategy": strategy,
            "variant": variant or None,
            "model_id": self.rt.model_id,
            "partition": partition,
            "computed_at": time.time(),
            "items": items,
            "history": [
                {
                    **_item_fields(h.item_id, payloads.get(h.item_id)),
                    "kind": h.kind,
                    "ts": h.ts,
                }
                for h in history
            ],
        }

    def sample_users(self, n: int = 8) -> list[dict[str, Any]]:
        """A few users of this worker's partitions (for links on the index page)."""
        out = []
        for key, raw in itertools.islice(self.tables.users.items(), n):
            if raw is None:
                continue
            state = UserState.from_bytes(raw)
            user_id = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            out.append({"user_id": user_id, "n_events": state.n_events, "url": user_url(user_id)})
        return out

    async def trending_items(self, n: int = 8) -> list[dict[str, Any]]:
        ranked = top_trending(self.trending(0), n)
        _, payloads = await self._lookup([r.item_id for r in ranked], vectors=False)
        return [
            {**_item_fields(r.item_id, payloads.get(r.item_id)), "score": r.score} for r in ranked
        ]

    # -- items -------------------------------------------------------------------------------
    async def similar(self, item_id: str, k: int) -> dict[str, Any]:
        """Visual neighbours of a stored item (the item itself left out), best first.

        With ``text_weight`` w > 0 the score is ``(1 - w) cos_image + w cos_text`` over the
        stored text vectors (``VectorStore.search_fused``; items without text: image only).
        """
        store = self.rt.store
        w = self.settings.text_weight

        def work() -> tuple[dict, list] | None:
            vec = store.get([item_id]).get(item_id)
            if vec is None:
                return None
            payload = store.get_payloads([item_id]).get(item_id, {})
            if w > 0 and "text" in store.vector_dims:
                text = store.get([item_id], using="text").get(item_id)
                return payload, store.search_fused(vec, text, k, text_weight=w, exclude=[item_id])
            return payload, store.search(vec, k, exclude=[item_id])

        found = await self.rt.in_store(work)
        if found is None:
            raise HttpError(404, f"unknown item {item_id!r}")
        payload, hits = found
        hits = sorted(hits, key=lambda h: (-h.score, h.item_id))
        return {
            "item": _item_fields(item_id, payload),
            "k": k,
            "text_weight": w,
            "items": [
                {**_item_fields(h.item_id, h.payload), "score": float(h.score)}
                for h in hits
                if h.item_id != item_id
            ],
        }

    async def item_image(self, item_id: str) -> tuple[bytes, str]:
        """The image file the item's payload names (and nothing else)."""
        payloads = await self.rt.in_store(self.rt.store.get_payloads, [item_id])
        payload = payloads.get(item_id)
        if payload is None:
            raise HttpError(404, f"unknown item {item_id!r}")
        name = payload.get("image_path")
        if not isinstance(name, str) or not name:
            raise HttpError(404, "the item has no image file")
        s = self.settings
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, _read_image_file, name, s.image_roots, s.max_image_bytes, s.max_image_pixels
        )

    # -- images in -----------------------------------------------------------------------------
    async def _decode(self, data: bytes) -> Any:
        from encoders import ImageError, load_image

        s = self.settings
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.rt.decode_pool,
                lambda: load_image(
                    data, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels
                ),
            )
        except ImageError as exc:
            raise HttpError(400, f"image rejected: {exc}") from None

    async def search_image(self, data: bytes, k: int) -> dict[str, Any]:
        """Embed an uploaded image and return the nearest stored items."""
        from streams import metrics

        if not data:
            raise HttpError(400, "no image in the request")
        image = await self._decode(data)
        t0 = time.perf_counter()
        vectors = await self.rt.in_encoder(self.rt.encoder.embed_images, [image])
        seconds = time.perf_counter() - t0
        metrics.observe_encode(1, seconds, source="search")
        hits = await self.rt.in_store(self.rt.store.search, vectors[0], k)
        hits = sorted(hits, key=lambda h: (-h.score, h.item_id))
        return {
            "model_id": self.rt.model_id,
            "k": k,
            "embed_seconds": seconds,
            "items": [
                {**_item_fields(h.item_id, h.payload), "score": float(h.score)} for h in hits
            ],
        }

    async def _save_upload(self, data: bytes) -> Path:
        """Validate the image and keep it under data_dir/uploads (content-addressed)."""
        await self._decode(data)
        ctype = sniff_image_type(data) or "image/jpeg"
        digest = hashlib.sha256(data).hexdigest()[:32]
        path = (self.settings.data_dir / "uploads" / f"{digest}{_EXT[ctype]}").resolve()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _write_atomic, path, data)
        return path

    def _allowed_image_path(self, name: str) -> str:
        """The real path of an image_path sent over HTTP, if it names a file in the image roots."""
        from encoders import ImageError
        from encoders.preprocess import confine

        s = self.settings
        try:
            return str(confine(name, s.image_roots, s.max_image_bytes))
        except ImageError as exc:
            raise HttpError(400, str(exc)) from None

    async def upload(self, doc: Mapping[str, Any], image: bytes | None = None) -> dict[str, Any]:
        """Publish a product upload to the products topic; the encoder agent indexes it.

        ``doc`` has ProductUpload fields; the image comes as ``image`` bytes (multipart), as
        ``image_b64``, or as an ``image_path`` inside ``settings.image_root``. Uploaded bytes are
        validated, stored under ``data_dir/uploads`` and published as that path.
        """
        fields = dict(doc)
        b64 = fields.pop("image_b64", None)
        if image is None and b64:
            try:
                image = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise HttpError(400, "image_b64 is not valid base64") from None
        if image is not None:
            if len(image) > self.settings.max_image_bytes:
                raise HttpError(413, "image too large")
            fields["image_path"] = str(await self._save_upload(image))
        elif fields.get("image_path"):
            fields["image_path"] = self._allowed_image_path(str(fields["image_path"]))
        else:
            raise HttpError(400, "no image: send a file field 'image', image_b64 or image_path")
        item_id = str(fields.get("item_id") or "").strip()
        if not item_id:
            digest = hashlib.sha256(Path(fields["image_path"]).name.encode()).hexdigest()
            item_id = f"up-{digest[:12]}"
        if not ITEM_ID_RE.match(item_id):
            raise HttpError(400, "item_id may use letters, digits, '.', '_' and '-' (max 128)")
        fields["item_id"] = item_id
        fields = {k: v for k, v in fields.items() if v not in ("", None)}
        fields.setdefault("ts", time.time())
        try:
            product = ProductUpload.model_validate(fields)
        except ValidationError as exc:
            raise HttpError(400, describe(exc)) from None
        fut = await self.topics.products.send(key=item_id.encode(), value=product.to_bytes())
        meta = await fut
        return {
            "status": "accepted",
            "item_id": item_id,
            "partition": getattr(meta, "partition", None),
            "offset": getattr(meta, "offset", None),
            "url": item_url(item_id),
            "image_url": image_url(item_id),
        }
