"""Event schemas: validated pydantic models, JSON on the wire.

``products``         ProductUpload     (key: item_id)
``views``            Interaction       (key: user_id; kind "view")
``purchases``        Interaction       (key: user_id; kind "purchase")
``user-events``      Interaction       (internal, validated, keyed by user_id) or Tick
``views``/``purchases`` may also carry a Tick (``{"kind": "tick", "ts": ...}``), a clock mark
``recommendations``  Recommendation    (key: user_id)
``item-embeddings``  ItemEmbedding     (compacted, key: item_id)
``dead-letters``     DeadLetter        (original record + reason)
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from streams.ranking.reasons import Reason

EventKind = Literal["view", "purchase"]


def _finite(ts: float) -> float:
    if not math.isfinite(ts):
        raise ValueError(f"ts must be finite, got {ts}")
    return ts


def _non_finite(token: str) -> float:
    raise ValueError(f"non-finite number {token} (only finite numbers are allowed)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {text[:40]} (out of the float range)")
    return value


class RecordError(ValueError):
    """A record value that cannot be used; the message is the dead letter's reason."""


def json_document(raw: bytes | bytearray | str | None) -> Any:
    """Decode a record's JSON value; every failure is a ValueError with a clear reason.

    Refused: a null value (a tombstone), a value that is not bytes or str, bytes that are not
    UTF-8, invalid JSON, NaN / Infinity / numbers out of the float range, and nesting deeper
    than the parser's recursion limit.
    """
    if raw is None:
        raise RecordError("empty record: null value (a tombstone)")
    if not isinstance(raw, (bytes, bytearray, str)):
        raise RecordError(f"record value must be bytes or str, not {type(raw).__name__}")
    if not raw:
        raise RecordError("empty record: zero-length value")
    try:
        text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"invalid JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_non_finite, parse_float=_finite_float)
    except RecursionError:
        raise RecordError("invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON: {exc}") from None


def json_object(raw: bytes | bytearray | str | None) -> dict[str, Any]:
    """:func:`json_document` of a value that must be a JSON object (ValueError otherwise)."""
    doc = json_document(raw)
    if not isinstance(doc, dict):
        raise RecordError(f"event must be a JSON object, not {type(doc).__name__}")
    return doc


def to_epoch(value: Any) -> float:
    """Accept epoch seconds (int/float/str) or an ISO-8601 date/datetime; return epoch seconds."""
    if isinstance(value, bool):
        raise ValueError("ts must be a number or an ISO date")
    if isinstance(value, int):
        try:
            return _finite(float(value))
        except OverflowError:
            raise ValueError("ts is out of the float range") from None
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, datetime):
        try:
            return value.timestamp()
        except (OverflowError, OSError) as exc:
            raise ValueError(f"ts is out of range: {exc}") from None
    if isinstance(value, str):
        try:
            return _finite(float(value))
        except ValueError as exc:
            if "finite" in str(exc):
                raise
        text = value.strip().replace("Z", "+00:00")
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            from datetime import timezone

            dt = dt.replace(tzinfo=timezone.utc)
        try:
            return dt.timestamp()
        except (OverflowError, OSError) as exc:
            raise ValueError(f"ts is out of range: {exc}") from None
    raise ValueError(f"ts must be a number or an ISO date, got {type(value).__name__}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str):
        return cls.model_validate_json(raw)


_HTTP_URL = re.compile(r"https?://[^/?#\s]+\S*", re.IGNORECASE)


class ProductUpload(_Model):
    """A product upload: the image as a file path, base64 bytes or an http(s) URL (exactly
    one; the encode agent fetches URLs through streams/imagefetch.py)."""

    item_id: str = Field(min_length=1, max_length=128)
    image_path: str | None = None
    image_b64: str | None = None
    image_url: str | None = None
    title: str = ""
    category: str | None = None
    description: str | None = None  # optional text (title + category + description: text vector)
    product_code: str | None = None
    price: float | None = None
    ts: float = Field(default_factory=time.time)
    # other catalogue labels (e.g. {"colour": "black"}), kept in the payload; a classifier
    # head for one of them fills it for uploads without it (see label())
    attributes: dict[str, str] | None = None

    _ts = field_validator("ts", mode="before")(lambda v: to_epoch(v))

    @field_validator("price")
    @classmethod
    def _finite_price(cls, price: float | None) -> float | None:
        if price is not None and not math.isfinite(price):
            raise ValueError(f"price must be a finite number, got {price}")
        return price

    @field_validator("image_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url and (len(url) > 2048 or not _HTTP_URL.fullmatch(url)):
            raise ValueError("image_url must be an http or https URL of at most 2048 characters")
        return url

    @model_validator(mode="after")
    def _one_image(self) -> ProductUpload:
        given = [n for n in ("image_path", "image_b64", "image_url") if getattr(self, n)]
        if not given:
            raise ValueError("product needs one image: image_path or image_b64 or image_url")
        if len(given) > 1:
            raise ValueError(f"product needs exactly one image source, got {', '.join(given)}")
        return self

    def payload(self) -> dict[str, Any]:
        """What the vector store keeps beside the vectors."""
        out: dict[str, Any] = {"item_id": self.item_id, "title": self.title}
        for name in ("category", "description", "product_code", "price", "image_path", "image_url"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name, value in (self.attributes or {}).items():
            out.setdefault(name, value)
        return out

    def label(self, name: str) -> str | None:
        """The upload's value of a label: ``category`` or an attribute; None when absent."""
        value = self.category if name == "category" else (self.attributes or {}).get(name)
        return value or None


SOURCE_VIEWS, SOURCE_PURCHASES = 0, 1


class Interaction(_Model):
    """A view or a purchase; ``kind`` is set from the topic when absent."""

    event_id: str = Field(min_length=1, max_length=256)
    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=128)
    ts: float
    kind: EventKind = "view"
    channel: int | None = None  # sales channel (H&M: 1 = store, 2 = online), optional
    # where the ingest agent read it: (SOURCE_VIEWS | SOURCE_PURCHASES, partition, offset); the
    # users agent folds each source position once (a re-forward after a crash is a repeat).
    # Set by the ingest agent only: a value sent by a client is dropped.
    ingested_from: tuple[int, int, int] | None = None

    _ts = field_validator("ts", mode="before")(lambda v: to_epoch(v))


class Tick(_Model):
    """An event-time clock mark: the days (trending buckets) before ``ts`` are over.

    Sent to ``views`` or ``purchases`` by a scheduler at the end of a day (or by a replay once
    its last event is processed); the worker then re-ranks every user active in the closed days
    with the days' final popularity (recommendations with ``trigger="day_close"``).
    """

    kind: Literal["tick"] = "tick"
    ts: float

    _ts = field_validator("ts", mode="before")(lambda v: to_epoch(v))


def is_tick(doc: object) -> bool:
    """True for a decoded JSON record that is a clock mark rather than an interaction."""
    return isinstance(doc, dict) and doc.get("kind") == "tick"


class RecItem(_Model):
    item_id: str
    score: float
    reason: Reason  # the signal that listed the item (streams/ranking/reasons.py)
    because: str | None = None  # the user's item behind the reason (a purchase, a seed...)


class Recommendation(_Model):
    user_id: str
    items: list[RecItem]
    model_id: str
    event_id: str | None = None
    event_ts: float | None = None
    produced_ts: float = Field(default_factory=time.time)
    strategy: str = "visual"
    # "event": computed right after the user's event (event_id); "day_close": re-ranked when
    # a clock mark closed the day the user was active in (event_id None)
    trigger: Literal["event", "day_close"] = "event"
    # the user-events partition and offset through which the worker's state was folded when it
    # ranked this list (the last record of the micro-batch); None for lists made elsewhere
    as_of_partition: int | None = None
    as_of_offset: int | None = None
    # the experiment variant that ranked it (streams/experiment.py); None without an experiment
    variant: str | None = None


def encode_vector(vec: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode()


def decode_vector(text: str) -> np.ndarray:
    """A float32 little-endian vector from base64; ValueError for bad base64 or length."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"vector is not valid base64: {exc}") from None
    if len(data) % 4:
        raise ValueError(f"vector of {len(data)} bytes: not a multiple of 4 (float32)")
    return np.frombuffer(data, dtype="<f4").copy()


class ItemEmbedding(_Model):
    """Compacted item index entry: a float32 little-endian vector in base64 (and the optional
    text vector when image + text fusion is on)."""

    item_id: str
    model_id: str
    vector_b64: str
    payload: dict[str, Any] = {}
    ts: float = Field(default_factory=time.time)
    text_vector_b64: str | None = None

    @property
    def vector(self) -> np.ndarray:
        return decode_vector(self.vector_b64)

    @property
    def text_vector(self) -> np.ndarray | None:
        return decode_vector(self.text_vector_b64) if self.text_vector_b64 else None


class DeadLetter(_Model):
    """A record the worker could not use, with the reason; nothing is lost.

    ``value_size`` and ``value_sha256`` describe the whole original value; when the letter
    would be too large to publish, ``value_b64`` holds only a prefix of it (``truncated``),
    and a long key is cut the same way (``key_size``, ``key_sha256``).
    """

    reason: str
    topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    value_b64: str
    stage: str = ""
    ts: float = Field(default_factory=time.time)
    value_size: int | None = None
    value_sha256: str | None = None
    truncated: bool = False
    key_size: int | None = None
    key_sha256: str | None = None

    @property
    def value(self) -> bytes:
        return base64.b64decode(self.value_b64)

    @classmethod
    def of(cls, reason: str, topic: str, value: bytes | None, **kw: Any) -> DeadLetter:
        return cls(
            reason=reason, topic=topic, value_b64=base64.b64encode(value or b"").decode(), **kw
        )
