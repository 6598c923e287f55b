"""Ingest agent: views + purchases -> validate -> user-events keyed by user_id.

A clock mark (:class:`~streams.events.Tick`) on either input goes to every user-events
partition, behind the events already forwarded there. Every record's ``ts`` passes the event-time
policy (:mod:`streams.eventtime`) first; each forwarded interaction carries its source position
(topic, partition, offset), which the users agent folds once.

Records are taken in micro-batches (``batch_max``, ``batch_within_s``, growing while the worker is
behind: :mod:`streams.agents.batching`); an item is known when the worker's catalogue mirror
holds it. The ingest fixes the order in which a user's events are
folded (the user-events partition order), so a replay can be checked against an independent
computation over the same order. A batch's records go to the producer as one record batch per
user-events partition, in the batch's order, before its offsets can be committed (under
exactly_once one by one through Faust's topic, inside its transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

import faust
from pydantic import ValidationError

from streams import metrics
from streams.agents.batching import take_batches
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
from streams.producer import DurableProducer
from streams.runtime import Runtime
from streams.topics import Topics, key_partition


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


class Forward(NamedTuple):
    """A record for user-events: a user's interaction, or a clock mark for one partition."""

    partition: int
    key: bytes | None
    value: bytes


def register(app: faust.App, topics: Topics, rt: Runtime, dead: DeadLetterSink) -> None:
    streaming, users = rt.settings.streaming, rt.settings.users
    purchases_topic = streaming.topics.full("purchases")
    clock = EventClock(rt.settings.event_time)
    # exactly_once: every send goes through Faust's topic, inside its transaction
    direct = streaming.processing_guarantee != "exactly_once"
    producer = cast(DurableProducer, app.producer)

    async def checked(batch: Sequence[faust.EventT]) -> list[Forward]:
        """The batch's records for user-events, in order; dead letters sent on the way."""
        out: list[Forward] = []
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
                mark = event.to_bytes()
                out.extend(Forward(p, None, mark) for p in range(streaming.partitions))
                continue
            if event.item_id not in rt.catalogue:  # the worker's mirror of the item index
                reason = f"unknown item_id {event.item_id!r}"
                await dead.send(reason, ev.value, message=msg, stage="ingest")
                continue
            code = SOURCE_PURCHASES if kind == "purchase" else SOURCE_VIEWS
            event = event.model_copy(update={"ingested_from": (code, msg.partition, msg.offset)})
            key = event.user_id.encode()
            out.append(Forward(key_partition(key, streaming.partitions), key, event.to_bytes()))
        return out

    async def send(records: Sequence[Forward]) -> None:
        sent = await producer.send_out(topics.user_events, records, transactions=not direct)
        metrics.observe_sent(topics.user_events.get_topic_name(), len(records), sent)

    @app.agent(topics.interactions, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for batch in take_batches(stream, users):
            # handed to the producer before the batch's offsets can be committed
            await send(await checked(batch))
