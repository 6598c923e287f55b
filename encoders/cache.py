"""Persistent embedding cache keyed by (model_id, sha256 of the image bytes).

``EmbeddingCache`` is a single sqlite3 file (default ``REPO_ROOT/.cache/embeddings.sqlite``)
holding float32 vectors. Keys are content hashes, so a renamed image is still a hit and a
changed image is a miss; the ``model_id`` (``efficientnet_lite0-<sha of the ONNX file>``)
keeps vectors of different model files apart.

``embed_catalogue`` turns a list of image paths into an ``(N, dim)`` matrix in input order,
embedding only the images the cache does not hold yet (decoded and preprocessed by a small
thread pool while the encoder runs the previous batch) and storing the new vectors as it goes,
so an interrupted run resumes where it stopped.

``vrec cache fill [--items items.csv]`` fills the cache for a catalogue (default: the H&M one).
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoders.preprocess import ImageError, load_image, preprocess
from streams.util import progress as progress_bar
from streams.util import sha256_bytes, sha256_file

if TYPE_CHECKING:
    from encoders.image import ImageEncoder

__all__ = [
    "DEFAULT_CACHE_PATH",
    "EmbeddingCache",
    "add_fill_args",
    "embed_catalogue",
    "run_fill",
    "sha256_bytes",
    "sha256_file",
]

log = logging.getLogger(__name__)


def _default_path() -> Path:
    from streams.settings import REPO_ROOT

    return REPO_ROOT / ".cache" / "embeddings.sqlite"


DEFAULT_CACHE_PATH = _default_path()
_CHUNK = 500  # keys per SELECT ... IN (...): below sqlite's bound-parameter limit


class EmbeddingCache:
    """sqlite3-backed map ``(model_id, image sha256) -> float32 vector``.

    One connection guarded by a lock: any thread may read or write (writes are serialised),
    which is enough for one writer thread plus readers. Vectors are stored as raw float32
    bytes with their dimension; ``get_many`` returns copies, never views of sqlite buffers.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else DEFAULT_CACHE_PATH
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), check_same_thread=False, timeout=30.0
        )
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " model_id TEXT NOT NULL, hash TEXT NOT NULL, dim INTEGER NOT NULL,"
                " vec BLOB NOT NULL, PRIMARY KEY (model_id, hash)) WITHOUT ROWID"
            )
            self._conn.commit()

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r})"

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self!r} is closed")
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def get_many(self, model_id: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of ``hashes`` that are present (absent keys are left out)."""
        keys = list(dict.fromkeys(hashes))
        out: dict[str, np.ndarray] = {}
        with self._lock:
            conn = self.conn
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = (
                    "SELECT hash, dim, vec FROM embeddings "
                    f"WHERE model_id = ? AND hash IN ({marks})"
                )
                rows = conn.execute(sql, [model_id, *chunk]).fetchall()
                for h, dim, blob in rows:
                    vec = np.frombuffer(blob, dtype=np.float32).copy()
                    if vec.shape != (dim,):
                        raise ValueError(f"corrupt cache row {model_id}/{h}: {vec.shape} != {dim}")
                    out[h] = vec
        return out

    def put_many(self, model_id: str, vectors: Mapping[str, np.ndarray]) -> int:
        """Store (or overwrite) ``{hash: vector}`` in one transaction; returns the row count."""
        rows = []
        for h, vec in vectors.items():
            arr = np.ascontiguousarray(vec, dtype=np.float32)
            if arr.ndim != 1 or arr.size == 0:
                raise ValueError(f"vector for {h!r} must be 1-d and non-empty, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"vector for {h!r} has non-finite values")
            rows.append((model_id, str(h), int(arr.size), arr.tobytes()))
        if not rows:
            return 0
        with self._lock:
            conn = self.conn
            with conn:  # one transaction, rolled back on error
                conn.executemany(
                    "INSERT OR REPLACE INTO embeddings (model_id, hash, dim, vec) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
        return len(rows)

    def count(self, model_id: str | None = None) -> int:
        with self._lock:
            if model_id is None:
                return int(self.conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
            return int(
                self.conn.execute(
                    "SELECT COUNT(*) FROM embeddings WHERE model_id = ?", (model_id,)
                ).fetchone()[0]
            )

    def __len__(self) -> int:
        return self.count()


def _decode(path: Path, size: int) -> np.ndarray:
    """Load + preprocess one image -> (1, 3, size, size)."""
    return preprocess([load_image(path)], size)


def embed_catalogue(
    encoder: ImageEncoder,
    image_paths: Sequence[str | Path],
    cache: EmbeddingCache,
    batch: int = 32,
    progress: bool = True,
    *,
    workers: int = 2,
    errors: str = "raise",
) -> np.ndarray:
    """Embeddings of ``image_paths`` as float32 ``(N, encoder.dim)``, rows in input order.

    Every file is hashed (sha256 of its bytes); images whose hash is cached under
    ``encoder.model_id`` are not decoded at all. Misses (each distinct hash once) are decoded
    and preprocessed by ``workers`` threads one batch ahead of the encoder, embedded with
    ``encoder.embed`` in batches of ``batch`` and written to ``cache`` after every batch.
    ``errors="raise"`` (default) raises :class:`ImageError` for an undecodable/missing image;
    ``errors="zero"`` logs it and returns a zero row for it (nothing is cached for it).
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    if errors not in ("raise", "zero"):
        raise ValueError("errors must be 'raise' or 'zero'")
    paths = [Path(p) for p in image_paths]
    model_id = encoder.model_id
    out = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    if not paths:
        return out

    bar = progress_bar(progress, len(paths), "hash")
    hashes: list[str | None] = []
    for p in paths:
        try:
            hashes.append(sha256_file(p))
        except OSError as exc:
            if errors == "raise":
                raise ImageError(f"cannot read image file {p}: {exc}") from None
            log.warning("skipping %s: %s", p, exc)
            hashes.append(None)
        bar.update(1)
    bar.close()

    known = cache.get_many(model_id, {h for h in hashes if h is not None})
    first_path: dict[str, Path] = {}
    for h, p in zip(hashes, paths):
        if h is not None and h not in known and h not in first_path:
            first_path[h] = p
    misses = list(first_path.items())
    log.info("%d images, %d distinct cached, %d to embed", len(paths), len(known), len(misses))

    if misses:
        bar = progress_bar(progress, len(misses), "embed")
        size = encoder.input_size
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode") as pool:

            def submit(start: int) -> list[tuple[str, Future[np.ndarray]]]:
                chunk = misses[start : start + batch]
                return [(h, pool.submit(_decode, p, size)) for h, p in chunk]

            pending = submit(0)
            for start in range(0, len(misses), batch):
                current = pending
                pending = submit(start + batch)  # decode the next batch while this one embeds
                ok_hashes: list[str] = []
                arrays: list[np.ndarray] = []
                for h, fut in current:
                    try:
                        arrays.append(fut.result())
                        ok_hashes.append(h)
                    except ImageError as exc:
                        if errors == "raise":
                            for _, f in pending:
                                f.cancel()
                            raise
                        log.warning("skipping %s: %s", first_path[h], exc)
                if arrays:
                    vecs = encoder.embed(np.concatenate(arrays, axis=0))
                    new = dict(zip(ok_hashes, vecs))
                    cache.put_many(model_id, new)
                    known.update(new)
                bar.update(len(current))
        bar.close()

    for i, h in enumerate(hashes):
        if h is not None and h in known:
            out[i] = known[h]
    return out


def add_fill_args(parser: argparse.ArgumentParser) -> None:
    """``vrec cache fill``'s arguments."""
    parser.add_argument("--items", type=Path, default=Path("/work/shared/data/hm/items.csv"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE_PATH)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    parser.add_argument("--workers", type=int, default=2, help="decode threads")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_fill(args: argparse.Namespace) -> int:
    """``vrec cache fill``: embed every image of an items.csv (default: the H&M catalogue)
    that the cache does not hold yet."""
    import csv

    from encoders import ImageEncoder
    from encoders.registry import ensure_model

    if args.model_dir is None:
        from streams.settings import get_settings

        args.model_dir = get_settings().model_dir
    root = args.items.parent
    with args.items.open(newline="") as fh:
        paths = [root / row["image_path"] for row in csv.DictReader(fh)]
    encoder = ImageEncoder(ensure_model(args.model_dir), device=args.device, threads=args.threads)
    t0 = time.perf_counter()
    with EmbeddingCache(args.cache) as cache:
        emb = embed_catalogue(
            encoder, paths, cache, batch=args.batch, workers=args.workers, errors="zero"
        )
        n = cache.count(encoder.model_id)
    zero = int((np.abs(emb).sum(axis=1) == 0).sum())
    print(
        f"{len(paths)} images -> {emb.shape} ({zero} failed); cache {args.cache} holds {n} "
        f"vectors for {encoder.model_id}; {time.perf_counter() - t0:.1f}s on {encoder.device}"
    )
    return 0
