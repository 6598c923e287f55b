"""Faust's partition pauses must reach aiokafka (streams.faust_compat.follow_faust_pauses).

Faust "pauses" a partition (its own tables' changelogs, outside recovery) only by leaving it out
of the partitions it asks aiokafka's fetcher for; aiokafka goes on fetching it, and while any
partition's records sit unconsumed in its buffer (for up to ``prefetch_backoff``, 0.1 s) it
sends no fetch request to that broker at all. A real consumer and broker show the stall and the
workaround here; the pipeline, restart and takeover tests run the worker with it installed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams import faust_compat
from streams.kafka_admin import create_topics

pytestmark = pytest.mark.kafka


async def _buffered_until(consumer: Any, tp: Any, timeout: float = 10.0) -> None:
    """Wait until the fetcher holds records of ``tp`` that nobody has taken."""
    fetcher = consumer._fetcher
    deadline = asyncio.get_running_loop().time() + timeout
    while tp not in fetcher._records:
        assert asyncio.get_running_loop().time() < deadline, f"{tp} never fetched"
        await asyncio.sleep(0.005)


def _fetch_requests(consumer: Any) -> list:
    """The fetch requests aiokafka's fetcher would send now (its own per-node rule)."""
    fetcher = consumer._fetcher
    assignment = consumer._subscription.subscription.assignment
    requests, *_ = fetcher._get_actions_per_node(assignment)
    return requests


async def _scenario(bootstrap: str, active_name: str, paused_name: str) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    active, paused = TopicPartition(active_name, 0), TopicPartition(paused_name, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()
    out: dict[str, Any] = {}
    try:
        consumer.assign([active, paused])
        await consumer.seek_to_beginning(active, paused)
        # records arrive on the partition "Faust" does not read (a changelog it wrote)
        for i in range(3):
            await producer.send_and_wait(paused_name, b"c%d" % i, partition=0)
        await _buffered_until(consumer, paused)
        # aiokafka alone: the unread buffer blocks every fetch to the broker
        out["requests_before"] = len(_fetch_requests(consumer))

        # the input is left out too (Faust's flow control, a full stream buffer): not paused
        faust_compat.follow_faust_pauses(consumer, set(), {paused_name})
        out["paused_after"] = consumer.paused()
        out["buffered_after"] = paused in consumer._fetcher._records
        out["requests_after"] = len(_fetch_requests(consumer))

        await producer.send_and_wait(active_name, b"a0", partition=0)
        got = await consumer.getmany(active, timeout_ms=5000)
        out["active_values"] = [r.value for r in got.get(active, [])]

        # asked for again (recovery): resumed, and every record is there, from the first
        faust_compat.follow_faust_pauses(consumer, {active, paused}, {paused_name})
        out["paused_resumed"] = consumer.paused()
        values: list[bytes] = []
        for _ in range(50):
            got = await consumer.getmany(paused, timeout_ms=200)
            values += [r.value for r in got.get(paused, [])]
            if len(values) >= 3:
                break
        out["paused_values"] = values
    finally:
        await consumer.stop()
        await producer.stop()
    return out


def test_faust_pauses_reach_aiokafka(kafka_broker: Any, topic_prefix: str) -> None:
    active, paused = f"{topic_prefix}fp-input", f"{topic_prefix}fp-changelog"
    create_topics(kafka_broker.bootstrap, [active, paused])
    out = asyncio.run(_scenario(kafka_broker.bootstrap, active, paused))
    # the upstream behaviour the workaround exists for: if aiokafka stops blocking the node
    # on an unread buffer, this fails and the workaround can go
    assert out["requests_before"] == 0
    assert {tp.topic for tp in out["paused_after"]} == {paused}
    assert out["buffered_after"] is False
    assert out["requests_after"] == 1  # the input is fetched again at once
    assert out["active_values"] == [b"a0"]
    assert out["paused_resumed"] == set()
    assert out["paused_values"] == [b"c0", b"c1", b"c2"]  # nothing skipped


def test_installed_on_the_pinned_faust() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert faust_compat.apply_fetch_pause()
    assert AIOKafkaConsumerThread._fetch_records is faust_compat.fetch_following_pauses
    assert not faust_compat.apply_fetch_pause(False)
    assert AIOKafkaConsumerThread._fetch_records is not faust_compat.fetch_following_pauses
    faust_compat.apply_fetch_pause()


async def _held_back(bootstrap: str, topic: str, waits: Any) -> dict[str, Any]:
    """A record fetched and left in the buffer (its agent's stream is full) for 20 ms: for how
    much longer it holds back fetches from its broker, and how long a fetch may wait there."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()
    try:
        if waits is not None:
            faust_compat.tune_fetcher(consumer._fetcher, *waits)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        await producer.send_and_wait(topic, b"t0", partition=0)
        await _buffered_until(consumer, tp)
        await asyncio.sleep(0.02)
        fetcher = consumer._fetcher
        return {
            "held_s": fetcher._records[tp].calculate_backoff(),
            "wait_ms": fetcher._fetch_max_wait_ms,
        }
    finally:
        await consumer.stop()
        await producer.stop()


def test_fetch_waits_are_shortened(kafka_broker: Any, topic_prefix: str) -> None:
    topic = f"{topic_prefix}fw-input"
    create_topics(kafka_broker.bootstrap, [topic])
    stock = asyncio.run(_held_back(kafka_broker.bootstrap, topic, None))
    tuned = asyncio.run(_held_back(kafka_broker.bootstrap, topic, (0.05, 0.005)))
    # aiokafka alone: 0.1 s from the fetch, so ~80 ms to go (if this fails, aiokafka changed
    # and tune_fetcher must be checked against it)
    assert 0.0 < stock["held_s"] <= 0.1
    assert stock["wait_ms"] == 500  # aiokafka's default (Faust passes 1500)
    assert tuned["held_s"] == 0  # 5 ms: the other partitions are fetched again already
    assert tuned["wait_ms"] == 50
