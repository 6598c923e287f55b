"""Kafka admin calls a worker makes at start (kafka-python): create vrec's topics, list topics.

The runtime's side of the broker: ``streams.worker`` creates its topics with :func:`create_topics`
(``LogAppendTime`` on the topics the event-time policy reads). Running a broker for dev, tests and
CI is tooling: ``vrec_tools.broker``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from streams.kafka_security import explain_auth_failures


class BrokerError(RuntimeError):
    """Kafka could not be resolved, started, reached or stopped."""


def admin_client(
    bootstrap: str, timeout_ms: int, client_id: str, security: Mapping[str, Any] | None = None
) -> Any:
    """A KafkaAdminClient (kafka-python) with vrec's timeouts and the client's security kwargs."""
    from kafka.admin import KafkaAdminClient

    cfg: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "request_timeout_ms": max(timeout_ms, 1000),
        **(security or {}),
    }
    defaults = KafkaAdminClient.DEFAULT_CONFIG
    for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):  # kafka-python 3.x / 2.x
        if key in defaults:
            cfg[key] = max(timeout_ms, 1000)
    with explain_auth_failures(bootstrap, security or {}):
        return KafkaAdminClient(**cfg)


def list_topics(
    bootstrap: str, timeout: float = 5, *, security: Mapping[str, Any] | None = None
) -> list[str]:
    """Topic names via a fresh admin client; raises if the broker does not answer.

    ``security``: the client's security kwargs (``streams.kafka_security.client_kwargs``).
    """
    admin = admin_client(bootstrap, int(timeout * 1000), "vrec-broker-probe", security)
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def _ready_topics(admin: Any, names: list[str]) -> set[str]:
    ready: set[str] = set()
    for topic in admin.describe_topics(names):
        name = topic.get("name", topic.get("topic"))
        parts = topic.get("partitions") or []
        if (
            topic.get("error_code", 0) == 0
            and parts
            and all(
                p.get("error_code", 0) == 0 and p.get("leader_id", p.get("leader", -1)) >= 0
                for p in parts
            )
        ):
            ready.add(name)
    return ready


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 1,
    compacted: Iterable[str] = (),
    timeout: float = 30,
    *,
    replication_factor: int = 1,
    security: Mapping[str, Any] | None = None,
    broker_time: Iterable[str] = (),
) -> None:
    """Create topics (existing ones are left alone) and wait until metadata shows them.

    Names in ``compacted`` get ``cleanup.policy=compact`` (and are created even if missing from
    ``names``); names in ``broker_time`` get ``message.timestamp.type=LogAppendTime`` (the
    broker stamps each record: a producer cannot set the time the event-time policy trusts).
    ``security``: the admin client's security kwargs.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    compact, stamped = set(compacted), set(broker_time)
    wanted = list(dict.fromkeys([*names, *compacted]))
    if not wanted:
        return
    deadline = time.monotonic() + timeout
    admin = admin_client(bootstrap, int(timeout * 1000), "vrec-create-topics", security)
    try:
        for name in wanted:
            configs = {"cleanup.policy": "compact"} if name in compact else {}
            if name in stamped:
                configs["message.timestamp.type"] = "LogAppendTime"
            topic = NewTopic(name, partitions, replication_factor, topic_configs=configs)
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([topic], timeout_ms=int(timeout * 1000))
        while True:
            missing = set(wanted) - _ready_topics(admin, wanted)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"topics not visible after {timeout}s: {sorted(missing)}")
            time.sleep(0.1)
    finally:
        admin.close()
