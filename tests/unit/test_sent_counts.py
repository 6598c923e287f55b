"""Records sent as whole batches are counted once acknowledged (streams.metrics.observe_sent)."""

from __future__ import annotations

import asyncio

import pytest

from streams import metrics


def _value(m: metrics.VrecMetrics, name: str, topic: str) -> float:
    return m.registry.get_sample_value(name, {"topic": topic}) or 0.0


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> metrics.VrecMetrics:
    m = metrics.VrecMetrics()
    monkeypatch.setattr(metrics, "_ACTIVE", m)
    return m


def test_counted_when_every_batch_is_acked(installed: metrics.VrecMetrics) -> None:
    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        a, b = loop.create_future(), loop.create_future()
        metrics.observe_sent("ue", 7, [a, b])
        a.set_result(None)
        await asyncio.sleep(0)
        before = _value(installed, "vrec_messages_out_total", "ue")  # b not acked yet
        b.set_result(None)
        await asyncio.sleep(0)
        return before, _value(installed, "vrec_messages_out_total", "ue")

    assert asyncio.run(run()) == (0.0, 7.0)
    assert _value(installed, "vrec_send_errors_total", "ue") == 0.0


def test_a_failed_batch_counts_all_as_errors_once(installed: metrics.VrecMetrics) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        a, b = loop.create_future(), loop.create_future()
        metrics.observe_sent("ue", 5, [a, b])
        a.set_exception(RuntimeError("broker gone"))
        b.set_exception(RuntimeError("broker gone"))
        await asyncio.sleep(0)

    asyncio.run(run())
    assert _value(installed, "vrec_send_errors_total", "ue") == 5.0
    assert _value(installed, "vrec_messages_out_total", "ue") == 0.0


def test_recommendations_counted_per_strategy_and_timed(installed: metrics.VrecMetrics) -> None:
    from streams.recommend import to_record

    recs = [
        to_record(u, [], strategy, model_id="m", event_id=f"e-{u}", event_ts=1.0)
        for u, strategy in (("a", "hybrid"), ("b", "hybrid"), ("c", "trending"))
    ]
    for rec in recs:
        installed.event_arrived(rec.event_id, rec.produced_ts - 0.2)

    async def run() -> None:
        fut = asyncio.get_running_loop().create_future()
        metrics.observe_sent("recs", len(recs), [fut], recommendations=recs)
        fut.set_result(None)
        await asyncio.sleep(0)

    asyncio.run(run())
    count = installed.registry.get_sample_value
    assert count("vrec_recommendations_total", {"strategy": "hybrid"}) == 2.0
    assert count("vrec_recommendations_total", {"strategy": "trending"}) == 1.0
    assert _value(installed, "vrec_messages_out_total", "recs") == 3.0
    assert count("vrec_event_to_recommendation_seconds_count") == 3.0
    assert 0.2 <= count("vrec_event_to_recommendation_seconds_sum") / 3 < 0.3


def test_records_sent_through_a_faust_topic_are_left_to_its_sensor(
    installed: metrics.VrecMetrics,
) -> None:
    metrics.observe_sent("ue", 4, [])  # exactly_once: send_out returned no batch futures
    assert _value(installed, "vrec_messages_out_total", "ue") == 0.0
    assert _value(installed, "vrec_send_errors_total", "ue") == 0.0
