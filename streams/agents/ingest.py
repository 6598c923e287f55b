"""Ingest agent: views + purchases -> validate -> user-events keyed by user_id.

A clock mark (:class:`~streams.events.Tick`) on either input goes to every user-events
partition, behind the events already forwarded there. Every record's ``ts`` passes the event-time
policy (:mod:`streams.eventtime`) first; each forwarded interaction carries its source position
(topic, partition, offset), which the users agent folds once.

Records are taken in micro-batches (``batch_max``, ``batch_within_s``); an item is known when the
worker's catalogue mirror holds it. It fixes the order in which a user's events are folded (the
user-events partition order), so a replay can be checked against an independent computation over
the same order.
"""

from __future__ import annotations

import faust
from pydantic import ValidationError

from streams.deadletters import DeadLetterSink, describe
from streams.events import (
    SOURCE_PURCHASES,
    SOURCE_VIEWS,
    Interaction,
    Tick,
    is_tick,
    json_object,
)
from streams.eventtime import EventClock
from streams.runtime import Runtime
from streams.topics import Topics


def parse_interaction(raw: bytes, kind: str) -> Interaction:
    """Parse a view/purchase; the topic gives the kind unless the record names one."""
    event = parse_input(raw, kind)
    if isinstance(event, Tick):
        raise ValueError("a clock mark, not an interaction")
    return event


def parse_input(raw: bytes, kind: str) -> Interaction | Tick:
    """Parse a record of views/purchases: an interaction, or a clock mark (kind "tick")."""
    doc = json_object(raw)  # ValueError for a tombstone, bad bytes, deep nesting...
    if is_tick(doc):
        return Tick.model_validate(doc)
    doc.setdefault("kind", kind)
    doc.pop("ingested_from", None)  # the ingest agent's own mark, never a client's
    return Interaction.model_validate(doc)


def register(app: faust.App, topics: Topics, rt: Runtime, dead: DeadLetterSink) -> None:
    streaming, users = rt.settings.streaming, rt.settings.users
    purchases_topic = streaming.topics.full("purchases")
    clock = EventClock(rt.settings.event_time)

    @app.agent(topics.interactions, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(users.batch_max, within=users.batch_within_s):
            for ev in batch:
                msg = ev.message
                kind = "purchase" if msg.topic == purchases_topic else "view"
                try:
                    event = parse_input(ev.value, kind)
                except (ValidationError, ValueError, UnicodeDecodeError) as exc:
                    await dead.send(describe(exc), ev.value, message=msg, stage="ingest")
                    continue
                verdict = clock.check(
                    (msg.topic, msg.partition),
                    event.ts,
                    msg.timestamp,
                    tick=isinstance(event, Tick),
                )
                if verdict.ts is None:
                    await dead.send(verdict.reason, ev.value, message=msg, stage="ingest")
                    continue
                if verdict.ts != event.ts:
                    event = event.model_copy(update={"ts": verdict.ts})
                if isinstance(event, Tick):
                    for partition in range(streaming.partitions):
                        await topics.user_events.send(value=event.to_bytes(), partition=partition)
                    continue
                if event.item_id not in rt.catalogue:  # the worker's mirror of the item index
                    reason = f"unknown item_id {event.item_id!r}"
                    await dead.send(reason, ev.value, message=msg, stage="ingest")
                    continue
                code = SOURCE_PURCHASES if kind == "purchase" else SOURCE_VIEWS
                event = event.model_copy(
                    update={"ingested_from": (code, msg.partition, msg.offset)}
                )
                await topics.user_events.send(key=event.user_id.encode(), value=event.to_bytes())
