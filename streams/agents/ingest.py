"""Ingest agent: views + purchases -> validate -> user-events keyed by user_id.

A clock mark (:class:`~streams.events.Tick`) on either input goes to every user-events
partition, behind the events already forwarded there.

Records are taken in micro-batches (``batch_max``, ``batch_within_s``); an item is known when the
worker's catalogue mirror holds it. It fixes the order in which a user's events are folded (the
user-events partition order), so a replay can be checked against an independent computation over
the same order.
"""

from __future__ import annotations

import json

import faust
from pydantic import ValidationError

from streams.deadletters import DeadLetterSink, describe
from streams.events import Interaction, Tick, is_tick
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
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("event must be a JSON object")
    if is_tick(doc):
        return Tick.model_validate(doc)
    doc.setdefault("kind", kind)
    return Interaction.model_validate(doc)


def register(app: faust.App, topics: Topics, rt: Runtime, dead: DeadLetterSink) -> None:
    s = rt.settings
    purchases_topic = s.topics.full("purchases")

    @app.agent(topics.interactions, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(s.batch_max, within=s.batch_within_s):
            for ev in batch:
                msg = ev.message
                kind = "purchase" if msg.topic == purchases_topic else "view"
                try:
                    event = parse_input(ev.value, kind)
                except (ValidationError, ValueError, UnicodeDecodeError) as exc:
                    await dead.send(describe(exc), ev.value, message=msg, stage="ingest")
                    continue
                if isinstance(event, Tick):
                    for partition in range(s.partitions):
                        await topics.user_events.send(value=event.to_bytes(), partition=partition)
                    continue
                if event.item_id not in rt.catalogue:  # the worker's mirror of the item index
                    reason = f"unknown item_id {event.item_id!r}"
                    await dead.send(reason, ev.value, message=msg, stage="ingest")
                    continue
                await topics.user_events.send(key=event.user_id.encode(), value=event.to_bytes())
