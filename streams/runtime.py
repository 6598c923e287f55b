"""What the agents share inside one worker process: store, encoder, executors, state mirrors.

Blocking work never runs on the event loop (heartbeats must not stall): the vector store is used
from one dedicated thread, ONNX inference from another, image decoding from a small pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from streams.dayclose import ActiveDays
from streams.ranking import Trending
from streams.ranking.copurchase import CoPurchase
from streams.settings import Settings
from streams.tables import parse_active_key, parse_copurchase_key, parse_trending_key

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    text_encoder: Any = None  # encoders.text.TextEncoder when text_weight > 0 (encode role)
    trending: dict[int, Trending] = field(default_factory=dict)
    trending_loaded: bool = False
    trending_dirty: set[int] = field(default_factory=set)  # partitions changed since published
    copurchase: dict[int, CoPurchase] = field(default_factory=dict)
    active: ActiveDays = field(default_factory=ActiveDays)  # users per open day, to re-rank
    # catalogue mirror (filled from the store at start, then by the encode agent)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # item -> image vector
    code_of: dict[str, str] = field(default_factory=dict)  # item -> product code
    members: dict[str, set[str]] = field(default_factory=dict)  # product code -> items
    price_of: dict[str, float] = field(default_factory=dict)  # item -> catalogue price (if any)

    # -- threads --------------------------------------------------------------------------
    async def in_store(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self.store_pool, lambda: fn(*args, **kw)
        )

    async def in_encoder(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.encode_pool, fn, *args)

    def open(self) -> None:
        """Load the encoder and open the vector store (blocking; call before the worker runs)."""
        from encoders import ImageEncoder, ensure_model, model_file
        from streams.store import open_store

        s = self.settings
        onnx_path = model_file(s.encoder_model) if s.encoder_model else ensure_model(s.model_dir)
        self.encoder = ImageEncoder(onnx_path, device=s.device, threads=s.encoder_threads)
        self.model_id = self.encoder.model_id
        if s.classifier:
            from encoders.classify import CategoryClassifier

            self.classifier = CategoryClassifier(s.classifier)
        if s.embedding_cache:
            from encoders.cache import EmbeddingCache

            self.cache = EmbeddingCache(Path(s.embedding_cache))
        dims = {"image": self.encoder.dim}
        if s.text_weight > 0:
            from encoders.text import EMBED_DIM, TextEncoder, ensure_text_model

            dims["text"] = EMBED_DIM
            if "encode" in s.role_set:
                text_path = ensure_text_model(s.model_dir)
                self.text_encoder = TextEncoder(text_path, threads=s.encoder_threads)
        self.store = self.store_pool.submit(
            open_store,
            s.store,
            path=s.data_dir / "qdrant",
            url=s.qdrant_url,
            collection=s.collection,
            vector_dims=dims,
        ).result()
        self.store_pool.submit(self._load_catalogue).result()
        log.info(
            "encoder %s on %s; store %s with %d items",
            self.model_id,
            self.encoder.providers,
            s.store,
            len(self.vectors),
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
        """Add an item to the catalogue mirror (store thread or event loop; dict ops only)."""
        if vector is not None:
            self.vectors[item_id] = np.asarray(vector, dtype=np.float32)
        code = payload.get("product_code")
        if code:
            self.code_of[item_id] = str(code)
            self.members.setdefault(str(code), set()).add(item_id)
        price = payload.get("price")
        if price is not None:
            self.price_of[item_id] = float(price)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self.store is not None:
            self.store_pool.submit(self.store.close).result()
            self.store = None
        for pool in (self.store_pool, self.encode_pool, self.decode_pool):
            pool.shutdown(wait=False)

    # -- trending mirrors (rebuilt from the changelog-backed table after recovery) ----------
    def new_trending(self) -> Trending:
        s = self.settings
        return Trending(
            s.trending_window_days * 86_400.0,
            s.trending_bucket_s,
            {"view": s.weight_view, "purchase": s.weight_purchase},
        )

    def trending_for(self, partition: int) -> Trending:
        tr = self.trending.get(partition)
        if tr is None:
            tr = self.trending[partition] = self.new_trending()
        return tr

    def copurchase_for(self, partition: int) -> CoPurchase:
        co = self.copurchase.get(partition)
        if co is None:
            co = self.copurchase[partition] = CoPurchase()
        return co

    def load_mirrors(self, trending_table: Any, copurchase_table: Any, active_table: Any) -> None:
        """Rebuild the in-memory trending, co-purchase and active-user state from their tables."""
        self.active = ActiveDays()
        for key, value in active_table.items():
            if value is not None:
                self.active.add(*parse_active_key(key))
        self.copurchase = {}
        for key, value in copurchase_table.items():
            if value is not None:
                partition, item_id = parse_copurchase_key(key)
                self.copurchase_for(partition).load_row(item_id, json.loads(value))
        self.load_trending(trending_table)

    def load_trending(self, table: Any) -> None:
        self.trending = {}
        n = 0
        for key, value in table.items():
            if value is None:
                continue
            partition, bucket, item_id = parse_trending_key(key)
            self.trending_for(partition).load_cell(bucket, item_id, json.loads(value))
            n += 1
        self.trending_loaded = True
        log.info("trending restored: %d cells over %d partitions", n, len(self.trending))
