"""Item replica: every worker materialises the whole item index from `item-embeddings`.

The encode agent of a worker only sees its own `products` partitions; with several workers each
one keeps a local vector store (Qdrant Edge) that must still hold every item. This task reads the
compacted `item-embeddings` topic from the beginning with a group-less consumer (all partitions,
every worker) and upserts what this worker does not hold yet.

A record it cannot use (not an ItemEmbedding, bad base64, a vector of the wrong dimension or
with a non-finite value) is dead-lettered with stage "replica" and skipped; the topic is re-read
at every start, so each worker reports such a record again after each restart. A null value
(the compaction tombstone of a deleted key) is skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import faust
import numpy as np

from streams.deadletters import DeadLetterSink
from streams.events import ItemEmbedding, decode_vector, json_object
from streams.kafka_security import client_kwargs
from streams.runtime import Runtime
from streams.topics import Topics

log = logging.getLogger(__name__)


def _checked(name: str, vec: np.ndarray, dim: int) -> np.ndarray:
    if vec.shape[0] != dim:
        raise ValueError(f"{name} vector of {vec.shape[0]} dims, the store has {dim}")
    if not np.isfinite(vec).all():
        raise ValueError(f"{name} vector has a value that is not finite")
    return vec


def _finite_number(x: object) -> bool:
    """A JSON number that is a finite float (a huge integer is not)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def decode_item(
    raw: bytes | None, dims: Mapping[str, int]
) -> tuple[ItemEmbedding, dict[str, np.ndarray]]:
    """An item-embeddings record and its vectors by name, checked against the store's
    ``dims`` (a text vector only where the store has one); ValueError says what is wrong."""
    emb = ItemEmbedding.model_validate(json_object(raw))
    price = emb.payload.get("price")
    if price is not None and not _finite_number(price):
        raise ValueError(f"payload price must be a finite number, got {str(price)[:40]!r}")
    vectors = {"image": _checked("image", emb.vector, dims["image"])}
    if emb.text_vector_b64 and "text" in dims:
        vectors["text"] = _checked("text", decode_vector(emb.text_vector_b64), dims["text"])
    return emb, vectors


def register(app: faust.App, topics: Topics, rt: Runtime, dead: DeadLetterSink) -> None:
    if not rt.settings.worker.replicate_items:
        return
    streaming = rt.settings.streaming

    @app.task
    async def replicate_items() -> None:
        from aiokafka import AIOKafkaConsumer

        from streams.store import StoredItem

        consumer = AIOKafkaConsumer(
            streaming.topics.full("item_embeddings"),
            bootstrap_servers=streaming.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **client_kwargs(streaming.security),
        )

        async def reject(r, reason: str) -> None:  # an aiokafka ConsumerRecord
            await dead.send(
                reason,
                r.value,
                topic=r.topic,
                key=r.key,
                partition=r.partition,
                offset=r.offset,
                stage="replica",
            )

        async def store_all(items: list) -> None:
            """Upsert in one call; if the store refuses, one by one (the bad one dead)."""
            try:
                await rt.in_store(rt.store.upsert, [it for it, _ in items])
                groups = [items]
            except Exception:  # noqa: BLE001 - find the record the store refuses
                groups = []
                for one in items:
                    try:
                        await rt.in_store(rt.store.upsert, [one[0]])
                        groups.append([one])
                    except Exception as exc:  # noqa: BLE001 - any store error: dead letter
                        await reject(one[1], f"vector store refused the item: {exc}")
            for group in groups:
                for it, r in group:
                    try:
                        rt.remember(it.item_id, it.vectors["image"], it.payload)
                    except (TypeError, ValueError) as exc:
                        await reject(r, f"catalogue refused the item: {exc}")

        await consumer.start()
        reported = -1  # item count last logged as caught up
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                items = []
                for records in batch.values():
                    for r in records:
                        if r.value is None:  # compaction tombstone
                            continue
                        try:
                            emb, vectors = decode_item(r.value, rt.store.vector_dims)
                        except ValueError as exc:
                            await reject(r, f"invalid item embedding: {exc}")
                            continue
                        if rt.catalogue.same_vector(emb.item_id, vectors["image"]):
                            continue
                        items.append((StoredItem(emb.item_id, vectors, emb.payload), r))
                if items:
                    await store_all(items)
                if not batch and len(rt.catalogue) != reported:
                    reported = len(rt.catalogue)
                    log.info("replica caught up: %d items", reported)
        finally:
            await consumer.stop()
