"""Dead letters: a record the worker cannot use is published with the reason; nothing is lost."""

from __future__ import annotations

import base64
import hashlib
import json
import logging

import faust

from streams.events import DeadLetter, RecordError

log = logging.getLogger(__name__)

#: Largest dead letter (value + key bytes) the sink publishes: under the producer's
#: ``max_request_size`` (faust: 1,000,000 bytes) with room for the record's own overhead.
MAX_DEAD_LETTER_BYTES = 900_000
#: Longest reason, stage and key text kept in a letter (characters).
MAX_REASON_CHARS = 4_000
MAX_KEY_BYTES = 1_024
#: Smallest ``max_bytes`` accepted: room for the reason, topic, key and stage at their limits
#: even when every character is JSON-escaped to six bytes.
MIN_DEAD_LETTER_BYTES = 64 * 1024


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text)} chars]"


def bound_letter(
    reason: str,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    stage: str = "",
    max_bytes: int = MAX_DEAD_LETTER_BYTES,
) -> tuple[DeadLetter, bytes | None]:
    """The dead letter of a record and the Kafka key to publish it under, together at most
    ``max_bytes`` long: the whole original when it fits, else a prefix of it (and of a long
    key) with the original's size and sha256."""
    if max_bytes < MIN_DEAD_LETTER_BYTES:
        raise ValueError(f"max_bytes must be at least {MIN_DEAD_LETTER_BYTES}, got {max_bytes}")
    raw = value or b""
    long_key = key is not None and len(key) > MAX_KEY_BYTES
    out_key = key[:MAX_KEY_BYTES] if long_key and key is not None else key
    common = {
        "reason": _cut(reason, MAX_REASON_CHARS),
        "topic": _cut(topic, 300),
        "partition": partition,
        "offset": offset,
        "key": None if out_key is None else out_key.decode("utf-8", "replace"),
        "stage": _cut(stage, 100),
        "value_size": len(raw),
        "value_sha256": hashlib.sha256(raw).hexdigest(),
        "key_size": len(key) if long_key and key is not None else None,
        "key_sha256": hashlib.sha256(key).hexdigest() if long_key and key is not None else None,
    }

    def letter(prefix: bytes) -> DeadLetter:
        b64 = base64.b64encode(prefix).decode()
        return DeadLetter(value_b64=b64, truncated=len(prefix) < len(raw), **common)

    def size(dl: DeadLetter) -> int:
        return len(dl.to_bytes()) + len(out_key or b"")

    whole = letter(raw)
    if size(whole) <= max_bytes:
        return whole, out_key
    room = max_bytes - size(letter(b"")) - 64  # 64: the "truncated" flag and padding
    n = max(0, room * 3 // 4)
    while n > 0 and size(letter(raw[:n])) > max_bytes:
        n //= 2
    return letter(raw[:n]), out_key


def describe(exc: BaseException) -> str:
    """A short, clear reason from a validation or decoding error."""
    if isinstance(exc, RecordError):
        return str(exc)
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return f"invalid JSON: {exc}"
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            parts = []
            for e in errors()[:5]:
                loc = ".".join(str(x) for x in e.get("loc", ())) or "record"
                parts.append(f"{loc}: {e.get('msg')}")
            return "invalid record: " + "; ".join(parts)
        except Exception:  # noqa: BLE001 - fall back to str()
            pass
    return f"{type(exc).__name__}: {exc}"


class DeadLetterSink:
    """Publishes dead letters, each bounded to ``max_bytes`` (see :func:`bound_letter`)."""

    def __init__(self, topic: faust.TopicT, max_bytes: int = MAX_DEAD_LETTER_BYTES) -> None:
        if max_bytes < MIN_DEAD_LETTER_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_DEAD_LETTER_BYTES}")
        self.topic = topic
        self.max_bytes = max_bytes
        self.count = 0

    async def send(
        self,
        reason: str,
        value: bytes | None,
        *,
        message: faust.types.Message | None = None,
        topic: str = "",
        key: bytes | None = None,
        partition: int | None = None,
        offset: int | None = None,
        stage: str = "",
    ) -> None:
        if message is not None:
            topic = message.topic
            key = message.key if key is None else key
            partition, offset = message.partition, message.offset
        letter, out_key = bound_letter(
            reason,
            topic,
            value,
            key=key,
            partition=partition,
            offset=offset,
            stage=stage,
            max_bytes=self.max_bytes,
        )
        self.count += 1
        log.warning("dead letter from %s (%s): %s", topic, stage, letter.reason[:500])
        await self.topic.send(key=out_key, value=letter.to_bytes())
