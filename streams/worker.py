"""Run one vrec worker process (all agents) until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

import faust

from streams.app import build_app
from streams.kafka_admin import create_topics
from streams.kafka_security import client_kwargs
from streams.logs import logging_config
from streams.settings import Settings
from streams.topics import all_topic_names, compacted_topic_names
from streams.util import tune_gc

log = logging.getLogger(__name__)


def prepare_topics(settings: Settings) -> None:
    """Create vrec's topics with the configured partitions (idempotent)."""
    streaming = settings.streaming
    create_topics(
        streaming.bootstrap,
        all_topic_names(streaming),
        partitions=streaming.partitions,
        compacted=compacted_topic_names(streaming),
        security=client_kwargs(streaming),
        # the event-time policy compares ts with the record's timestamp: the broker's own
        broker_time=[streaming.topics.full("views"), streaming.topics.full("purchases")],
    )


def run_worker(settings: Settings, loglevel: str = "INFO") -> int:
    prepare_topics(settings)
    vrec = build_app(settings)
    vrec.runtime.open()
    tune_gc(settings.worker.gc_threshold)  # after the start-up objects exist: they are frozen
    try:
        worker = faust.Worker(
            vrec.app,
            loglevel=loglevel,
            quiet=True,
            logging_config=logging_config(settings.worker.log_format, loglevel),
        )
        worker.execute_from_commandline()
    finally:
        vrec.runtime.close()
    return 0
