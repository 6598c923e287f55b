"""Shared helpers, one home: file digests, atomic writes, progress bars, GC tuning."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any, *, indent: int = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (a temp file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
    tmp.replace(path)


class NoBar:
    """A progress bar that shows nothing (``progress(False, ...)``)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(enabled: bool, total: int, desc: str, unit: str = "img", mininterval: float = 5.0):  # noqa: ANN201
    """A tqdm bar on stderr, or :class:`NoBar` when ``enabled`` is false."""
    if not enabled:
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=mininterval, file=sys.stderr)


def parse_gc_threshold(text: str) -> tuple[int, int, int] | None:
    """``"gen0,gen1,gen2"`` -> thresholds for :func:`gc.set_threshold` ("" -> None: Python's
    own); ValueError for anything else."""
    if not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"gc threshold {text!r}: want three non-negative integers 'g0,g1,g2'")
    g0, g1, g2 = (int(p) for p in parts)
    return g0, g1, g2


def tune_gc(threshold: str) -> None:
    """Set the cyclic collector's thresholds (``threshold`` as :func:`parse_gc_threshold`
    reads it) and move every object alive now (modules, the app, caches read at start) to the
    permanent generation, which full collections no longer scan (:func:`gc.freeze`).

    A worker holds a large, long-lived heap (the catalogue mirror, co-purchase rows, Faust's
    state) and allocates many short-lived objects per event; with Python's default thresholds
    the collections cost about a quarter of the fold-and-rank CPU (measured in-process over
    the full H&M catalogue: 1,990 -> 2,590 events per CPU-second with the collector off)."""
    values = parse_gc_threshold(threshold)
    if values is None:
        return
    gc.collect()
    gc.set_threshold(*values)
    gc.freeze()
