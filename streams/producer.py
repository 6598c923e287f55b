"""A Faust producer whose flush() waits until every buffered message is acknowledged.

Faust writes table changes with ``send_soon`` into a producer buffer and, before committing the
source offsets, calls ``producer.flush()``. In faust-streaming 0.15.3 that flush gives up after
0.1 s without a message leaving the buffer (``ProducerBuffer.flush_atmost``), and the message the
buffer's sender has just taken out is neither in the buffer nor in aiokafka's accumulator. The
offsets can then be committed before the table's changelog records reach the broker; a worker
killed at that moment comes back with a table that misses the update and a committed offset past
the event: the update is lost (seen in CI: 1,998 of 2,000 events in the user table after SIGKILL).

:class:`DurableProducer` remembers each message handed to ``send_soon`` until the broker acks it,
and its ``flush()`` waits for all of them, so no offset is committed ahead of its table writes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer
from faust.types import FutureMessage
from faust.types.transports import ProducerT


class DurableProducer(AIOKafkaProducer):
    """aiokafka producer of Faust with a flush that drains ``send_soon`` messages for real."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.unacked: set[FutureMessage] = set()

    def send_soon(self, fut: FutureMessage) -> None:
        self.unacked.add(fut)
        fut.add_done_callback(self.unacked.discard)
        super().send_soon(fut)

    async def flush(self) -> None:
        """Send what is buffered and wait until the broker acked each message handed over
        before this call (or raise).

        Faust picks the offsets to commit before it flushes, so the messages that matter are
        those already handed over. Waiting until *no* message is unacked instead never ends
        while agents keep producing: under sustained load commits then stalled for seconds.
        """
        pending = list(self.unacked)
        await super().flush()
        if pending:
            # gather raises the first send error: the caller (the offset commit) must not proceed.
            await asyncio.gather(*pending)


class App(faust.App):
    """``faust.App`` with the :class:`DurableProducer`."""

    def _new_producer(self) -> ProducerT:
        kwargs: dict[str, Any] = {"loop": self.loop, "beacon": self.beacon}
        return DurableProducer(self.transport, **kwargs)
