"""The real Kafka broker: round trip, topic creation, transactions, lifecycle."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from streams.kafka_admin import create_topics, list_topics
from vrec_tools.broker import KafkaBroker, find_free_port

pytestmark = pytest.mark.kafka


def _consume(
    bootstrap: str, topic: str, n: int, timeout: float = 30, **kw: Any
) -> list[tuple[bytes | None, bytes]]:
    """Read ``n`` messages from the start of ``topic`` (fresh consumer group)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kw,
    )
    out: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend((r.key, r.value) for r in records)
    finally:
        consumer.close()
    return out


def _topic_config(bootstrap: str, topic: str, key: str) -> str | None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    if isinstance(result, dict):  # kafka-python 3.x
        return result["topic"][topic].get(key, {}).get("value")
    for response in result:  # kafka-python 2.x: DescribeConfigsResponse objects
        for *_, name, entries in response.resources:
            if name == topic:
                return next((e[1] for e in entries if e[0] == key), None)
    return None


def test_produce_then_consume(kafka_broker: Any, topic_prefix: str) -> None:
    topic = f"{topic_prefix}roundtrip"
    create_topics(kafka_broker.bootstrap, [topic])
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        producer.send(topic, key=b"k1", value=b"hello kafka").get(timeout=30)
    finally:
        producer.close()
    assert _consume(kafka_broker.bootstrap, topic, 1) == [(b"k1", b"hello kafka")]


def test_create_topics_compacted_and_idempotent(kafka_broker: Any, topic_prefix: str) -> None:
    plain, compact = f"{topic_prefix}plain", f"{topic_prefix}compact"
    for _ in range(2):  # second call: topics exist, must not raise
        create_topics(kafka_broker.bootstrap, [plain, compact], partitions=2, compacted=[compact])
    assert {plain, compact} <= set(list_topics(kafka_broker.bootstrap))
    assert _topic_config(kafka_broker.bootstrap, compact, "cleanup.policy") == "compact"
    assert _topic_config(kafka_broker.bootstrap, plain, "cleanup.policy") in (None, "delete")


def test_transactional_producer_commits(kafka_broker: Any, topic_prefix: str) -> None:
    """What Faust's exactly_once needs: InitProducerId, AddPartitions, EndTxn on RF=1."""
    from aiokafka import AIOKafkaProducer

    topic = f"{topic_prefix}txn"
    create_topics(kafka_broker.bootstrap, [topic])

    async def produce() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_broker.bootstrap,
            transactional_id=f"{topic_prefix}tx",
            enable_idempotence=True,
        )
        await asyncio.wait_for(producer.start(), 60)  # InitProducerId
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"committed")
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"aborted")
            await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(produce())
    got = _consume(kafka_broker.bootstrap, topic, 1, isolation_level="read_committed")
    assert [v for _, v in got] == [b"committed"]


def test_status_reports_running(kafka_broker: Any) -> None:
    st = kafka_broker.status()
    assert st["running"] is True
    assert st["bootstrap"] == kafka_broker.bootstrap == f"127.0.0.1:{st['port']}"
    if isinstance(kafka_broker, KafkaBroker):
        assert st["pid"] and st["ready"]


def test_stop_really_stops_and_is_idempotent(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", port=find_free_port(), heap="256m")
    broker.start()
    try:
        pid = broker.status()["pid"]
        assert pid and broker.pid_path.read_text().strip() == str(pid)
        broker.start()  # already running: no second JVM
        assert broker.status()["pid"] == pid
    finally:
        broker.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not broker.pid_path.exists()
    assert broker.status()["running"] is False
    broker.stop()  # idempotent
    with pytest.raises(Exception):  # noqa: B017 - nothing listens any more
        list_topics(broker.bootstrap, timeout=2)
