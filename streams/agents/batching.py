"""Micro-batches off a Faust stream that grow when the worker is behind (:func:`take_batches`).

Faust's ``Stream.take_events(max_, within)`` yields whatever its background reader buffered in
``within`` seconds after the previous batch (or ``max_`` records, sooner). Its reader hands the
buffer one record at a time through the stream's machinery (~20-30 us each, shared with the other
agents of the loop), so with the 5 ms wait that keeps latency low a batch holds ~60-200 records
even when thousands wait on the broker, and the users agent ranks ~0.56 lists per event where a
1,000-record batch ranks ~0.30 (one list per user per batch).

:func:`take_batches` is faust-streaming 0.15.3's ``take_events`` (same buffer, processor, acks
after the batch is processed, same stop and crash handling) with one change: when the wait ends
and at least ``backlog`` records of the batch's partition are still on the broker past the last
one buffered (the consumer's high-water mark: the worker is behind), it goes on buffering, in
steps of ``within``, until ``max_`` records, until fewer than ``backlog`` wait, or until
``backlog_within`` seconds in all. Records that wait on the broker have already waited longer
than any batch wait; buffering them into this batch, rather than the next, saves ranking work.
When the worker keeps up (fewer than ``backlog`` records behind, as at 1,000 events/s with the
defaults), batches are exactly Faust's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
from mode.utils.futures import notify

from streams.settings import UserSettings

PINNED = "0.15.3"  # the faust-streaming release whose Stream.take_events this copies

# the records waiting on the broker after a buffered event (None: not known yet)
Waiting = Callable[[faust.EventT], "int | None"]


def broker_backlog(app: faust.App) -> Waiting:
    """Records of the event's partition on the broker past it, from the consumer's high-water
    mark (the last fetch response's; None before the first)."""
    consumer = app.consumer

    def waiting(event: faust.EventT) -> int | None:
        message = event.message
        high = consumer.highwater(message.tp)
        return None if high is None else high - message.offset - 1

    return waiting


async def take_batches(
    stream: faust.StreamT, limits: UserSettings, *, waiting: Waiting | None = None
) -> AsyncIterator[list[faust.EventT]]:
    """Batches of at most ``limits.batch_max`` events, waiting ``limits.batch_within_s`` and,
    behind by ``limits.batch_backlog`` records or more, up to ``limits.batch_backlog_within_s``
    in all (see the module's docstring; a backlog of 0: Faust's ``take_events``). ``waiting``
    defaults to :func:`broker_backlog`."""
    max_, within = limits.batch_max, limits.batch_within_s
    backlog, backlog_within = limits.batch_backlog, limits.batch_backlog_within_s
    s: Any = stream  # Faust's Stream: the private members below are 0.15.3's
    if waiting is None:
        waiting = broker_backlog(s.app)
    loop = asyncio.get_running_loop()
    buffer: list[Any] = []
    events: list[faust.EventT] = []
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future | None = None
    channel_it = s.channel.__aiter__()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming
        try:
            if buffer_consuming is not None:  # a batch is being processed: wait for its acks
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            buffer.append(value)
            event = s.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            events.append(event)
            if len(buffer) >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await s.wait(buffer_consumed)  # never more than max_ records in a batch
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            s.log.exception("Error adding to take buffer: %r", exc)
            await s.crash(exc)
        return value

    def behind() -> bool:
        if not backlog or not events or buffer_full.is_set():
            return False
        left = waiting(events[-1])
        return left is not None and left >= backlog

    s.enable_acks = False  # acked below, once the batch is processed
    s.add_processor(add_to_buffer)
    s._enable_passive(channel_it)
    while not s.should_stop:
        await s.wait_for_stopped(buffer_full, timeout=within)
        deadline = loop.time() + backlog_within - within
        while behind() and not s.should_stop and (left := deadline - loop.time()) > 0:
            await s.wait_for_stopped(buffer_full, timeout=min(within, left))
        if not buffer:
            continue
        buffer_consuming = loop.create_future()
        try:
            yield list(events)
        finally:
            buffer.clear()
            for event in events:
                await s.ack(event)
            events.clear()
            notify(buffer_consuming)
            buffer_full.clear()
            buffer_consumed.set()
