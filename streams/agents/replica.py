"""Item replica: every worker materialises the whole item index from `item-embeddings`.

The encode agent of a worker only sees its own `products` partitions; with several workers each
one keeps a local vector store (Qdrant Edge) that must still hold every item. This task reads the
compacted `item-embeddings` topic from the beginning with a group-less consumer (all partitions,
every worker) and upserts what this worker does not hold yet.
"""

from __future__ import annotations

import logging

import faust

from streams.events import ItemEmbedding
from streams.runtime import Runtime
from streams.topics import Topics

log = logging.getLogger(__name__)


def register(app: faust.App, topics: Topics, rt: Runtime) -> None:
    s = rt.settings
    if not s.replicate_items:
        return

    @app.task
    async def replicate_items() -> None:
        from aiokafka import AIOKafkaConsumer

        from streams.store import StoredItem

        consumer = AIOKafkaConsumer(
            s.topics.full("item_embeddings"),
            bootstrap_servers=s.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        reported = -1  # item count last logged as caught up
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                items = []
                for records in batch.values():
                    for r in records:
                        try:
                            emb = ItemEmbedding.from_bytes(r.value)
                        except ValueError as exc:
                            log.warning("replica: bad item-embeddings record: %s", exc)
                            continue
                        vec = emb.vector
                        if rt.catalogue.same_vector(emb.item_id, vec):
                            continue
                        vectors = {"image": vec}
                        if emb.text_vector_b64 and "text" in rt.store.vector_dims:
                            vectors["text"] = emb.text_vector
                        items.append((StoredItem(emb.item_id, vectors, emb.payload), emb))
                if items:
                    await rt.in_store(rt.store.upsert, [it for it, _ in items])
                    for _, emb in items:
                        rt.remember(emb.item_id, emb.vector, emb.payload)
                if not batch and len(rt.catalogue) != reported:
                    reported = len(rt.catalogue)
                    log.info("replica caught up: %d items", reported)
        finally:
            await consumer.stop()
