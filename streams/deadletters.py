"""Dead letters: a record the worker cannot use is published with the reason; nothing is lost."""

from __future__ import annotations

import json
import logging

import faust

from streams.events import DeadLetter

log = logging.getLogger(__name__)


def describe(exc: BaseException) -> str:
    """A short, clear reason from a validation or decoding error."""
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
    def __init__(self, topic: faust.TopicT) -> None:
        self.topic = topic
        self.count = 0

    async def send(
        self,
        reason: str,
        value: bytes | None,
        *,
        message: faust.types.Message | None = None,
        topic: str = "",
        key: bytes | None = None,
        stage: str = "",
    ) -> None:
        if message is not None:
            topic = message.topic
            key = message.key if key is None else key
        letter = DeadLetter.of(
            reason,
            topic,
            value,
            partition=None if message is None else message.partition,
            offset=None if message is None else message.offset,
            key=None if key is None else key.decode("utf-8", "replace"),
            stage=stage,
        )
        self.count += 1
        log.warning("dead letter from %s (%s): %s", topic, stage, reason)
        await self.topic.send(key=key, value=letter.to_bytes())
