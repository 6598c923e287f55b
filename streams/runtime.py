"""What the agents share inside one worker process, in typed parts: the services (store,
encoder, executors), the catalogue mirror (:class:`~streams.catalogue.Catalogue`) and the
per-partition state mirrors (:class:`PartitionStates`).

Blocking work never runs on the event loop (heartbeats must not stall): the vector store is used
from one dedicated thread, ONNX inference from another, image decoding from a small pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from streams.catalogue import Catalogue
from streams.ranking import Trending
from streams.ranking.copurchase import CoPurchase
from streams.settings import PopularitySettings, Settings
from streams.tables import (
    parse_active_key,
    parse_copurchase_key,
    parse_copurchase_value,
    parse_trending_key,
    parse_trending_value,
)
from streams.userbatch import PartitionState

log = logging.getLogger(__name__)
T = TypeVar("T")


class PartitionStates:
    """The users agent's in-memory mirrors of the trending, co-purchase and active-days tables,
    per user-events partition; rebuilt from the tables after every rebalance."""

    def __init__(self, popularity: PopularitySettings, kind_weights: Mapping[str, float]) -> None:
        self.popularity = popularity
        self.kind_weights = dict(kind_weights)
        self._parts: dict[int, PartitionState] = {}
        self.loaded = False
        self.dirty: set[int] = set()  # partitions whose trending changed since published

    def new_trending(self) -> Trending:
        pop = self.popularity
        return Trending(pop.window_days * 86_400.0, pop.bucket_s, self.kind_weights)

    def get(self, partition: int) -> PartitionState:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = PartitionState(
                trending=self.new_trending(),
                copurchase=CoPurchase(self.popularity.copurchase_neighbours),
            )
        return part

    def trending(self, partition: int) -> Trending:
        return self.get(partition).trending

    def load(self, trending_table: Any, copurchase_table: Any, active_table: Any) -> None:
        """Rebuild every partition's state from the tables (after recovery or a rebalance)."""
        self._parts = {}
        for key, value in active_table.items():
            if value is not None:
                partition, bucket, user_id = parse_active_key(key)
                self.get(partition).active.add(partition, bucket, user_id)
        for key, value in copurchase_table.items():
            if value is not None:
                partition, item_id, other = parse_copurchase_key(key)
                count, at = parse_copurchase_value(value)
                part = self.get(partition)
                part.copurchase.load_cell(item_id, other, count)
                part.applied[key] = at
        n = 0
        for key, (partition, bucket, item_id), counts, at in _trending_cells(trending_table):
            part = self.get(partition)
            part.trending.load_cell(bucket, item_id, counts)
            part.applied[key] = at
            n += 1
        for part in self._parts.values():  # a crash may have left counts past the commit
            part.counted_through = max(part.applied.values(), default=-1)
        self.loaded = True
        log.info("partition state restored: %d trending cells, %d partitions", n, len(self._parts))

    def read_trending(self, table: Any, partition: int) -> Trending:
        """A partition's trending counts read from its table (leaves the mirrors alone)."""
        tr = self.new_trending()
        for _, (p, bucket, item_id), counts, _ in _trending_cells(table):
            if p == partition:
                tr.load_cell(bucket, item_id, counts)
        return tr


def _trending_cells(
    table: Any,
) -> Iterator[tuple[bytes, tuple[int, int, str], list[int], int]]:
    """(key, (partition, bucket, item), counts, offset) of every live trending cell."""
    for key, value in table.items():
        if value is not None:
            yield (key, parse_trending_key(key), *parse_trending_value(value))


@dataclass
class Runtime:
    settings: Settings
    store_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="vrec-store")
    )
    encode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="vrec-encode")
    )
    decode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="vrec-decode")
    )
    store: Any = None  # streams.store.VectorStore, opened in the store thread
    encoder: Any = None  # encoders.ImageEncoder, loaded before the worker starts
    model_id: str = "none"
    cache: Any = None  # encoders.cache.EmbeddingCache when settings.embedding_cache is set
    classifier: Any = None  # encoders.classify.CategoryClassifier when settings.classifier is set
    # every head of settings.classifier (comma-separated), each filling its own label
    classifiers: list[Any] = field(default_factory=list)
    text_encoder: Any = None  # encoders.text.TextEncoder when text_weight > 0 (encode role)
    # catalogue mirror (filled from the store at start, then by the encode agent and replica)
    catalogue: Catalogue = field(default_factory=Catalogue)
    partitions: PartitionStates = field(init=False)

    def __post_init__(self) -> None:
        self.partitions = PartitionStates(
            self.settings.popularity, self.settings.users.kind_weights
        )

    # -- threads --------------------------------------------------------------------------
    async def in_store(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self.store_pool, lambda: fn(*args, **kw)
        )

    async def in_encoder(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.encode_pool, fn, *args)

    def open(self) -> None:
        """Load the encoder and open the vector store (blocking; call before the worker runs)."""
        from encoders import ImageEncoder, model_file
        from encoders.registry import ensure_model
        from streams.store import open_configured

        enc, vs, worker = self.settings.encoder, self.settings.vector_store, self.settings.worker
        onnx_path = model_file(enc.model) if enc.model else ensure_model(enc.model_dir)
        self.encoder = ImageEncoder(onnx_path, device=enc.device, threads=enc.threads)
        self.model_id = self.encoder.model_id
        if enc.classifier_heads:
            from encoders.classify import CategoryClassifier

            self.classifiers = [CategoryClassifier(h) for h in enc.classifier_heads]
            self.classifier = self.classifiers[0]
        if enc.embedding_cache:
            from encoders.cache import EmbeddingCache

            self.cache = EmbeddingCache(Path(enc.embedding_cache))
        dims = {"image": self.encoder.dim}
        if enc.text_weight > 0:
            from encoders.registry import ensure_text_model
            from encoders.text import EMBED_DIM, TextEncoder

            dims["text"] = EMBED_DIM
            if "encode" in worker.roles:
                text_path = ensure_text_model(enc.model_dir)
                self.text_encoder = TextEncoder(text_path, threads=enc.threads)
        self.store = self.store_pool.submit(
            open_configured, vs, path=worker.data_dir / "qdrant", vector_dims=dims
        ).result()
        self.store_pool.submit(self._load_catalogue).result()
        log.info(
            "encoder %s on %s; store %s with %d items",
            self.model_id,
            self.encoder.providers,
            vs.kind,
            len(self.catalogue),
        )

    def _load_catalogue(self, chunk: int = 1000) -> None:
        ids = self.store.item_ids()
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            vectors = self.store.get(part)
            payloads = self.store.get_payloads(part)
            for item_id in part:
                self.remember(item_id, vectors.get(item_id), payloads.get(item_id, {}))

    def remember(self, item_id: str, vector: np.ndarray | None, payload: dict) -> None:
        """Add an item to the catalogue mirror (store thread or event loop)."""
        self.catalogue.put(item_id, vector, payload)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self.store is not None:
            self.store_pool.submit(self.store.close).result()
            self.store = None
        for pool in (self.store_pool, self.encode_pool, self.decode_pool):
            pool.shutdown(wait=False)
