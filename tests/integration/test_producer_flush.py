"""The offset commit's producer flush must wait for table changelog writes (streams.producer)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from streams.kafka_admin import create_topics
from streams.producer import App

pytestmark = pytest.mark.kafka

SEND_DELAY_S = 0.3  # longer than the 0.1 s after which Faust's own flush gives up


async def _acked_after_flush(app_cls: type[faust.App], bootstrap: str, topic_name: str) -> int:
    """send_soon five messages through a slowed-down buffer, flush, count the acked ones."""
    app = app_cls(f"flush-{app_cls.__module__}", broker=f"kafka://{bootstrap}", autodiscover=False)
    topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")
    producer = app.producer
    send = producer.buffer._send_pending

    async def slow_send(fut: Any) -> None:  # a busy broker or a starved event loop
        await asyncio.sleep(SEND_DELAY_S)
        await send(fut)

    producer.buffer._send_pending = slow_send
    await producer.start()
    try:
        futures = [topic.send_soon(key=b"k", value=b"v%d" % i) for i in range(5)]
        await producer.flush()
        acked = sum(f.done() and f.exception() is None for f in futures)
        await asyncio.gather(*futures)  # let the rest finish before stopping
        return acked
    finally:
        await producer.stop()


def test_flush_waits_for_every_buffered_message(kafka_broker: Any, topic_prefix: str) -> None:
    topic = f"{topic_prefix}flush"
    create_topics(kafka_broker.bootstrap, [topic])
    stock = asyncio.run(_acked_after_flush(faust.App, kafka_broker.bootstrap, topic))
    durable = asyncio.run(_acked_after_flush(App, kafka_broker.bootstrap, topic))
    assert durable == 5
    # Faust's own flush returned with messages still unsent: the case DurableProducer exists for.
    # If a faust-streaming release fixes that, this fails and the workaround can go.
    assert stock < 5


async def _send_both_ways(bootstrap: str, topic_name: str, n: int) -> tuple[list, list]:
    """n keyed records one by one (aiokafka's partitioner) and then as record batches
    (send_partitioned to key_partition's choice, batches small enough that there are several);
    returns each way's (partition, offset, key, value) as read back."""
    from aiokafka import AIOKafkaConsumer

    from streams.topics import key_partition

    app = App("send-records", broker=f"kafka://{bootstrap}", autodiscover=False)
    app.conf.producer_max_batch_size = 1024  # several record batches per call
    producer = app.producer
    await producer.start()
    keys = [f"user-{i}".encode() for i in range(n)]
    try:
        one_by_one = [
            await producer.send(topic_name, k, b"a%d" % i, None, None, None)
            for i, k in enumerate(keys)
        ]
        await asyncio.gather(*one_by_one)
        batches = await producer.send_partitioned(
            topic_name, [(key_partition(k, 3), k, b"b%d" % i) for i, k in enumerate(keys)]
        )
        assert len(batches) > 3  # several record batches per partition
        await producer.flush()
        assert all(f.done() and f.exception() is None for f in batches)  # flush waited
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic_name, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        got: list = []
        while len(got) < 2 * n:
            for tp, recs in (await consumer.getmany(timeout_ms=2000)).items():
                got += [(tp.partition, r.offset, r.key, r.value) for r in recs]
    finally:
        await consumer.stop()
    return [g for g in got if g[3][:1] == b"a"], [g for g in got if g[3][:1] == b"b"]


def test_send_records_keeps_order_and_partitions(kafka_broker: Any, topic_prefix: str) -> None:
    """Record batches land in order, each key on the partition aiokafka's own partitioner
    gives its key (so the ingest's batched forward keeps every user where it was)."""
    topic = f"{topic_prefix}records"
    create_topics(kafka_broker.bootstrap, [topic], partitions=3)
    n = 300
    singles, batched = asyncio.run(_send_both_ways(kafka_broker.bootstrap, topic, n))
    assert len(singles) == len(batched) == n
    where = {key: p for p, _, key, _ in singles}
    assert len(set(where.values())) == 3
    assert {key: p for p, _, key, _ in batched} == where
    for partition in range(3):
        mine = sorted((o, v) for p, o, _, v in batched if p == partition)
        values = [int(v[1:]) for _, v in mine]
        assert values == sorted(values)  # the order they were given in
