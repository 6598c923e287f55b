"""Suite-wide fixtures: one real Kafka broker per test session, unique topic prefixes.

``VREC_TEST_BROKER=host:port`` points the suite at an already running broker (left running).
If Kafka cannot be started or reached, ``kafka_broker`` fails the tests that use it; it never
skips. SIGTERM/SIGHUP end the session as Ctrl-C does (fixtures tear down: the broker and the
workers stop), and the broker gets SIGTERM if pytest dies without that.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from streams.kafka_admin import list_topics
from streams.procs import install_stop_handlers
from vrec_tools.broker import KafkaBroker, ensure_jars, find_free_port


@dataclass(frozen=True)
class ExternalBroker:
    """A broker this suite did not start (``VREC_TEST_BROKER``); same ``bootstrap``/``status``."""

    bootstrap: str

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    def status(self) -> dict[str, Any]:
        list_topics(self.bootstrap)
        return {"running": True, "pid": None, "port": self.port, "bootstrap": self.bootstrap}


AnyBroker = KafkaBroker | ExternalBroker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnyBroker]:
    """A running Kafka broker; use ``kafka_broker.bootstrap`` ("127.0.0.1:PORT")."""
    external = os.environ.get("VREC_TEST_BROKER", "").strip()
    if external:
        broker = ExternalBroker(external)
        broker.status()  # raises if it does not answer
        yield broker
        return
    ensure_jars()
    local = KafkaBroker(
        tmp_path_factory.mktemp("kafka"), port=find_free_port(), die_with_parent=True
    )
    local.start(timeout=120)
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A unique topic-name prefix such as ``"t1a2b3c4d."``."""
    return f"t{uuid.uuid4().hex[:8]}."


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM/SIGHUP (a CI time limit) raise KeyboardInterrupt: pytest stops and tears down."""
    install_stop_handlers()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the broker get the ``kafka`` marker (``-m "not kafka"`` deselects them)."""
    for item in items:
        if "kafka_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)
