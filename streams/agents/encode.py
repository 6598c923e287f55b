"""Encoder agent: products -> decode + embed (off the loop) -> vector store + item-embeddings."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from pathlib import Path

import faust
import numpy as np

from streams.deadletters import DeadLetterSink, describe
from streams.events import ItemEmbedding, ProductUpload, encode_vector
from streams.imagefetch import ImageFetcher
from streams.runtime import Runtime
from streams.topics import Topics

log = logging.getLogger(__name__)


def resolve_image(
    product: ProductUpload, roots: Sequence[Path] | None, max_bytes: int = 10 * 2**20
) -> bytes:
    """The image bytes of an upload: its base64, or the file its image_path names inside
    ``roots`` (relative: under ``roots[0]``; see ``encoders.preprocess.read_confined``). An
    image_url is not read here: the agent fetches it (``streams.imagefetch``)."""
    from encoders.preprocess import read_confined, unavailable

    if product.image_url:
        raise ValueError("image_url is fetched by the encode agent, not read as a file")
    if product.image_b64:
        try:
            return base64.b64decode(product.image_b64, validate=True)
        except ValueError as exc:
            raise ValueError(f"image_b64 is not valid base64: {exc}") from exc
    if not roots:
        raise unavailable(max_bytes)
    return read_confined(product.image_path or "", roots, max_bytes)


def register(app: faust.App, topics: Topics, rt: Runtime, dead: DeadLetterSink) -> None:
    from encoders.preprocess import PixelBudget

    enc, images = rt.settings.encoder, rt.settings.images
    decode_budget = PixelBudget(enc.max_batch_pixels)
    fetcher = ImageFetcher.from_section(images, enc.max_image_bytes)  # products with image_url

    def load(
        product: ProductUpload, fetched: bytes | None = None
    ) -> tuple[str | None, np.ndarray | None, object | None]:
        """(image sha256, cached vector, decoded image); runs in the decode pool. ``fetched``:
        the bytes of the product's image_url."""
        from encoders import load_image
        from streams.util import sha256_bytes

        data = (
            fetched
            if fetched is not None
            else resolve_image(product, images.roots, enc.max_image_bytes)
        )
        limits = {
            "max_bytes": enc.max_image_bytes,
            "max_pixels": enc.max_image_pixels,
            "max_side": enc.decode_max_side,  # large images are decoded reduced
            "budget": decode_budget,  # bounds the pixels the decode pool holds at once
        }
        if rt.cache is None:
            return None, None, load_image(data, **limits)
        sha = sha256_bytes(data)
        hit = rt.cache.get_many(rt.model_id, [sha]).get(sha)
        if hit is not None:
            return sha, hit, None
        return sha, None, load_image(data, **limits)

    def embed_misses(loaded: list[tuple[str | None, np.ndarray | None, object | None]]):
        """Vectors in input order: cached ones as they are, the rest embedded (and cached)."""
        misses = [i for i, (_, vec, _) in enumerate(loaded) if vec is None]
        out = [vec for _, vec, _ in loaded]
        if misses:
            fresh = rt.encoder.embed_images([loaded[i][2] for i in misses])
            for i, vec in zip(misses, fresh):
                out[i] = vec
            if rt.cache is not None:
                rt.cache.put_many(rt.model_id, {loaded[i][0]: out[i] for i in misses})
        return np.stack(out)

    def with_predicted_category(products: list[ProductUpload], vectors: np.ndarray) -> list[dict]:
        """Payloads; for each classifier head, uploads without its label (``category`` or an
        attribute such as ``colour``) get the predicted label, its confidence and model id."""
        payloads = [p.payload() for p in products]
        heads = rt.classifiers or ([rt.classifier] if rt.classifier is not None else [])
        for head in heads:
            name = head.field
            missing = [i for i, p in enumerate(products) if not p.label(name)]
            if not missing:
                continue
            for i, (label, conf) in zip(missing, head.predict(vectors[missing])):
                payloads[i].update(
                    {
                        name: label,
                        f"{name}_confidence": round(conf, 4),
                        f"{name}_model": head.model_id,
                    }
                )
        return payloads

    def embed_texts(products: list[ProductUpload]) -> list[np.ndarray | None]:
        """Text vectors (title + category + description) in input order; None for no text."""
        from encoders.text import upload_text

        texts = [upload_text(p.title, p.category, p.description) for p in products]
        todo = [i for i, t in enumerate(texts) if t]
        out: list[np.ndarray | None] = [None] * len(texts)
        if todo:
            for i, vec in zip(todo, rt.text_encoder.embed([texts[i] for i in todo])):
                out[i] = vec
        return out

    @app.agent(topics.products, name="encode")
    async def encode(stream: faust.StreamT) -> None:
        async for events in stream.take_events(enc.batch, within=enc.batch_wait_s):
            await encode_batch(list(events))

    async def encode_batch(events: list[faust.EventT]) -> None:
        """Decode, embed and store a batch; a record that fails at any step is a dead letter
        and the others of the batch go on."""
        loop_items: list[tuple[faust.EventT, ProductUpload]] = []
        for ev in events:
            try:
                loop_items.append((ev, decode_product(ev.value)))
            except ValueError as exc:
                await dead.send(describe(exc), ev.value, message=ev.message, stage="encode")
        loop_items, fetched = await fetch_urls(loop_items)
        futures = [rt.decode_pool.submit(load, p, f) for (_, p), f in zip(loop_items, fetched)]
        good: list[tuple[faust.EventT, ProductUpload]] = []
        loaded = []
        for (ev, product), fut in zip(loop_items, futures):
            try:
                loaded.append(await _wrap(fut))
                good.append((ev, product))
            except Exception as exc:  # noqa: BLE001 - any bad image is a dead letter
                await dead.send(f"image: {exc}", ev.value, message=ev.message, stage="encode")
        if not good:
            return
        try:
            outputs = await embed_and_store([p for _, p in good], loaded)
        except Exception as exc:  # noqa: BLE001 - one record may spoil the batch: one by one
            if len(good) == 1:
                outputs = []
                await _fail(good[0][0], exc)
            else:
                log.warning("encode batch of %d failed; retrying its records one by one", len(good))
                outputs = []
                for (ev, product), one in zip(good, loaded):
                    try:
                        outputs += await embed_and_store([product], [one])
                    except Exception as one_exc:  # noqa: BLE001 - this record is the bad one
                        await _fail(ev, one_exc)
        for out in outputs:
            await topics.item_embeddings.send(key=out.item_id.encode(), value=out.to_bytes())
        log.info("embedded %d products (%d dead letters so far)", len(outputs), dead.count)

    async def fetch_urls(
        items: list[tuple[faust.EventT, ProductUpload]],
    ) -> tuple[list[tuple[faust.EventT, ProductUpload]], list[bytes | None]]:
        """Fetch the image_url images of a batch concurrently (the fetcher bounds how many at
        once); a failed fetch is a dead letter. The items left and their bytes (None: no URL)."""

        async def one(product: ProductUpload) -> bytes | None:
            return None if not product.image_url else await fetcher.fetch(product.image_url)

        results = await asyncio.gather(*(one(p) for _, p in items), return_exceptions=True)
        kept: list[tuple[faust.EventT, ProductUpload]] = []
        data: list[bytes | None] = []
        for (ev, product), got in zip(items, results):
            if isinstance(got, Exception):
                await dead.send(f"image_url: {got}", ev.value, message=ev.message, stage="encode")
            elif isinstance(got, BaseException):
                raise got
            else:
                kept.append((ev, product))
                data.append(got)
        return kept, data

    async def _fail(ev: faust.EventT, exc: Exception) -> None:
        reason = f"encode: {type(exc).__name__}: {exc}"
        log.warning("encode failed for one product: %s", reason, exc_info=exc)
        await dead.send(reason, ev.value, message=ev.message, stage="encode")

    async def embed_and_store(products: list[ProductUpload], loaded: list) -> list[ItemEmbedding]:
        """Embed, classify and store products; their item-embeddings records, in order."""
        from streams.store import StoredItem

        vectors: np.ndarray = await rt.in_encoder(embed_misses, loaded)
        payloads = with_predicted_category(products, vectors)
        texts: list[np.ndarray | None] = [None] * len(products)
        if rt.text_encoder is not None:  # image + text fusion (text_weight > 0)
            texts = await rt.in_encoder(embed_texts, products)
        items = [
            StoredItem(p.item_id, {"image": v} if t is None else {"image": v, "text": t}, pl)
            for p, v, t, pl in zip(products, vectors, texts, payloads)
        ]
        outputs = [
            ItemEmbedding(
                item_id=p.item_id,
                model_id=rt.model_id,
                vector_b64=encode_vector(v),
                payload=pl,
                ts=p.ts,
                text_vector_b64=None if t is None else encode_vector(t),
            )
            for p, v, t, pl in zip(products, vectors, texts, payloads)
        ]
        await rt.in_store(rt.store.upsert, items)
        for p, v, pl in zip(products, vectors, payloads):
            rt.remember(p.item_id, v, pl)
        return outputs


def decode_product(raw: bytes | None) -> ProductUpload:
    """A products record as the encode agent reads it; every failure is a ValueError (a
    ValidationError names the field, e.g. a price that is not finite)."""
    if raw is None:
        raise ValueError("empty record: null value (a tombstone)")
    return ProductUpload.from_bytes(raw)


async def _wrap(fut):
    return await asyncio.wrap_future(fut)
