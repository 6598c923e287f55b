"""Event time through the real pipeline: one far-future record (year 3000, or epoch
milliseconds) is dead-lettered at ingest and changes nobody's recommendations.

Before the event-time policy the year-3000 purchase moved the partition's trending window past
every cell: the lists of all later users changed and the trending list fell to one item.
"""

from __future__ import annotations

import pytest
from kafka import KafkaProducer
from test_pipeline import check_against_reference, replay_all
from test_pipeline_hybrid import hybrid_settings

from streams.events import Interaction
from vrec_tools.harness import Pipeline

pytestmark = pytest.mark.timeout(900)


def test_far_future_records_are_dead_lettered_and_harm_no_one(kafka_broker, tmp_path, sample):
    products, events = sample
    good = {e.event_id for e in events}
    victim = events[500]
    year_3000 = Interaction(
        event_id="future",
        user_id=victim.user_id,
        item_id=victim.item_id,
        ts=32_503_680_000.0,
        kind="purchase",
    )
    millis = Interaction(
        event_id="millis",
        user_id="js-client",
        item_id=events[900].item_id,
        ts=events[900].ts * 1000.0,
        kind="view",
    )
    log = [*events[:1000], year_3000, millis, *events[1000:]]
    settings = hybrid_settings(tmp_path, kafka_broker.bootstrap)
    with Pipeline(settings) as pipe:
        pipe.index(products)
        # a producer that also forges the record's timestamp: the topic keeps the broker's
        forger = KafkaProducer(bootstrap_servers=settings.bootstrap)
        forged = year_3000.model_copy(update={"event_id": "forged", "user_id": "forger"})
        forger.send(
            settings.topics.full("purchases"), forged.to_bytes(), timestamp_ms=32_503_680_000_000
        )
        forger.flush()
        forger.close()
        replay_all(pipe, log)
        check_against_reference(pipe, settings, good)  # as if the three were never sent
        letters = pipe.dead_letters()
    reasons = sorted(d.reason for d in letters)
    assert len(letters) == 3, reasons
    assert all(d.stage == "ingest" for d in letters)
    assert sum("3000-01-01" in r and "record's timestamp" in r for r in reasons) == 2, reasons
    assert sum("milliseconds?" in r for r in reasons) == 1, reasons
