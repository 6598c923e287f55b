"""Prometheus metrics of a worker: a Faust sensor plus sampled gauges, served at ``GET /metrics``.

Counters come from Faust's sensor hooks (every message in, every send out), so nothing in the
agents has to remember to count. The event-to-recommendation latency is ``produced_ts`` of a
recommendation minus the wall time at which its view/purchase record arrived at this worker
(``on_message_in`` on the views/purchases topics, matched by ``event_id``): it covers the ingest
agent, the user-events hop and the users agent. An event that arrived on another worker (several
workers, several partitions) is not matched and not observed.

Gauges that cost something to read (table sizes, consumer lag, store size) are sampled when
``/metrics`` is scraped; table sizes are exact key counts, rescanned at most every 10 s.

The encoder agent reports its batches with :func:`observe_encode`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from faust.sensors import Sensor
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    import faust

    from streams.app import VrecApp
    from streams.events import Recommendation

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MAX_TRACKED_ARRIVALS = 100_000  # event ids awaiting their recommendation (oldest dropped)
TABLE_SAMPLE_S = 10.0
ONLINE_AT = (1, 5, 10)  # hit@at counters besides hit@k (anywhere in the list)


class VrecMetrics:
    """All metrics of one worker, in their own registry (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_in = Counter(
            "vrec_messages_in", "Records received by the consumer", ["topic"], registry=r
        )
        self.messages_out = Counter(
            "vrec_messages_out", "Records sent and acknowledged", ["topic"], registry=r
        )
        self.send_errors = Counter(
            "vrec_send_errors", "Records the producer failed to send", ["topic"], registry=r
        )
        self.recommendations = Counter(
            "vrec_recommendations",
            "Recommendations published (acknowledged), by strategy",
            ["strategy"],
            registry=r,
        )
        self.dead_letters = Counter(
            "vrec_dead_letters",
            "Records sent to the dead-letters topic, by stage (encode, ingest, users)",
            ["stage"],
            registry=r,
        )
        self.latency = Histogram(
            "vrec_event_to_recommendation_seconds",
            "produced_ts of a recommendation minus the arrival of its view/purchase at the worker",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_batch = Histogram(
            "vrec_encode_batch_size",
            "Images per encoder call",
            ["source"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.encode_seconds = Histogram(
            "vrec_encode_seconds",
            "Wall time of one encoder batch, as its caller measured it",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encoded = Counter(
            "vrec_encoded_images", "Images embedded by the encoder", ["source"], registry=r
        )
        self.http_requests = Counter(
            "vrec_http_requests", "HTTP requests served", ["view", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "vrec_http_request_seconds",
            "HTTP request handling time",
            ["view"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_items = Gauge("vrec_store_items", "Items in the vector store", registry=r)
        # online metrics: each event scored against the last list published to its user
        online = ["variant", "trigger", "strategy", "kind"]
        self.online_events = Counter(
            "vrec_online_events",
            "Events scored against the last list their user was shown",
            online,
            registry=r,
        )
        self.online_hits = Counter(
            "vrec_online_hits",
            "Events whose item was in the first `at` items of that list (at=k: anywhere)",
            [*online, "at"],
            registry=r,
        )
        self.online_rr = Counter(
            "vrec_online_rr", "Sum of reciprocal ranks of the events' items", online, registry=r
        )
        self.online_rr_squared = Counter(
            "vrec_online_rr_squared", "Sum of squared reciprocal ranks", online, registry=r
        )
        self._arrivals: OrderedDict[str, float] = OrderedDict()

    # -- API for the agents ----------------------------------------------------------------
    def observe_encode(self, batch_size: int, seconds: float, source: str = "products") -> None:
        """One encoder call: ``batch_size`` images in ``seconds``."""
        self.encode_batch.labels(source).observe(batch_size)
        self.encode_seconds.labels(source).observe(seconds)
        self.encoded.labels(source).inc(batch_size)

    def observe_hits(self, hits: Iterable[Any]) -> None:
        """Online metrics of a batch (streams.userbatch.OnlineHit records)."""
        for h in hits:
            labels = (h.variant or "-", h.trigger, h.strategy, h.kind)
            self.online_events.labels(*labels).inc()
            if h.rank:
                rr = 1.0 / h.rank
                self.online_rr.labels(*labels).inc(rr)
                self.online_rr_squared.labels(*labels).inc(rr * rr)
                for at in ONLINE_AT:
                    if h.rank <= at:
                        self.online_hits.labels(*labels, str(at)).inc()
                self.online_hits.labels(*labels, "k").inc()

    # -- latency bookkeeping ---------------------------------------------------------------
    def event_arrived(self, event_id: str, at: float) -> None:
        self._arrivals[event_id] = at
        self._arrivals.move_to_end(event_id)
        while len(self._arrivals) > MAX_TRACKED_ARRIVALS:
            self._arrivals.popitem(last=False)

    def recommendation_delivered(
        self, strategy: str, event_id: str | None, produced_ts: float | None
    ) -> None:
        """A recommendation the broker acknowledged: counted, and its latency observed."""
        self.recommendations.labels(strategy).inc()
        self.recommendation_sent(event_id, produced_ts)

    def recommendation_sent(self, event_id: str | None, produced_ts: float | None) -> None:
        if event_id is None or produced_ts is None:
            return
        arrived = self._arrivals.pop(event_id, None)
        if arrived is not None:
            self.latency.observe(max(0.0, produced_ts - arrived))

    # -- exposition ------------------------------------------------------------------------
    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text 0.0.4, or OpenMetrics when asked for) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class VrecSensor(Sensor):
    """Feeds :class:`VrecMetrics` from Faust's sensor hooks (runs on the event loop)."""

    def __init__(
        self,
        metrics: VrecMetrics,
        *,
        interaction_topics: Iterable[str],
        recommendations_topic: str,
        dead_letters_topic: str,
        **kwargs: Any,
    ) -> None:
        self.metrics = metrics
        self.interaction_topics = frozenset(interaction_topics)
        self.recommendations_topic = recommendations_topic
        self.dead_letters_topic = dead_letters_topic
        super().__init__(**kwargs)

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        self.metrics.messages_in.labels(tp.topic).inc()
        if tp.topic in self.interaction_topics:
            event_id = _json_field(message.value, "event_id")
            if isinstance(event_id, str):
                self.metrics.event_arrived(event_id, time.time())

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        # Never keep the message itself (it would outlive its send): keep what we need of it.
        if topic == self.recommendations_topic:
            doc = _json_doc(message.value)
            return (
                topic,
                "recommendation",
                doc.get("strategy", "unknown"),
                doc.get("event_id"),
                doc.get("produced_ts"),
            )
        if topic == self.dead_letters_topic:
            return topic, "dead_letter", _json_field(message.value, "stage") or "unknown"
        return (topic,)

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        if not state:
            return
        m = self.metrics
        m.messages_out.labels(state[0]).inc()
        if len(state) > 1 and state[1] == "recommendation":
            m.recommendation_delivered(str(state[2]), state[3], state[4])
        elif len(state) > 1 and state[1] == "dead_letter":
            m.dead_letters.labels(str(state[2])).inc()

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        if state:
            self.metrics.send_errors.labels(state[0]).inc()

    def on_web_request_start(self, app: Any, request: Any, *, view: Any = None) -> dict:
        return {"t0": time.perf_counter()}

    def on_web_request_end(
        self, app: Any, request: Any, response: Any, state: dict, *, view: Any = None
    ) -> None:
        name = getattr(view, "view_name", None) or "unknown"
        status = getattr(response, "status", None) or 500
        self.metrics.http_requests.labels(name, str(status)).inc()
        if state and "t0" in state:
            self.metrics.http_seconds.labels(name).observe(time.perf_counter() - state["t0"])


class _SampledCollector(Collector):
    """Table sizes and consumer lag, read when scraped."""

    def __init__(self, app: faust.App, model_id: Callable[[], str]) -> None:
        self.app = app
        self.model_id = model_id
        self._sizes: dict[str, int] = {}
        self._next_sample = 0.0
        self.sample_seconds = 0.0

    def describe(self) -> list:
        return []  # sampled families: not checked for name clashes at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily(
            "vrec_info", "Worker identity (value 1)", labels=["app_id", "model_id"]
        )
        info.add_metric([str(self.app.conf.id), self.model_id()], 1)
        yield info
        sizes = GaugeMetricFamily(
            "vrec_table_keys",
            "Keys in a Faust table on this worker's active partitions (sampled)",
            labels=["table"],
        )
        for name, n in self._table_sizes().items():
            sizes.add_metric([name], n)
        yield sizes
        yield GaugeMetricFamily(
            "vrec_table_sample_seconds",
            "Time the last table size sample took",
            value=self.sample_seconds,
        )
        lag = GaugeMetricFamily(
            "vrec_consumer_lag",
            "Highwater minus committed offset, per assigned topic-partition",
            labels=["topic", "partition"],
        )
        read_lag = GaugeMetricFamily(
            "vrec_consumer_read_lag",
            "Highwater minus the next offset to read (last read + 1), per topic-partition",
            labels=["topic", "partition"],
        )
        for (topic, partition), (committed_lag, position_lag) in self._lags().items():
            labels = [topic, str(partition)]
            if committed_lag is not None:
                lag.add_metric(labels, committed_lag)
            if position_lag is not None:
                read_lag.add_metric(labels, position_lag)
        yield lag
        yield read_lag

    def _table_sizes(self) -> dict[str, int]:
        """Exact sizes, rescanned at most every TABLE_SAMPLE_S and never more than ~0.5% of
        the time (a scan runs on the event loop: ~25 ms per 200k RocksDB keys)."""
        now = time.monotonic()
        if now >= self._next_sample:
            t0 = time.perf_counter()
            sizes = {name: table_size(t) for name, t in list(self.app.tables.items())}
            self._sizes = {k: v for k, v in sizes.items() if v >= 0} or self._sizes
            self.sample_seconds = time.perf_counter() - t0
            self._next_sample = now + max(TABLE_SAMPLE_S, 200 * self.sample_seconds)
        return self._sizes

    def _lags(self) -> dict[tuple[str, int], tuple[int | None, int | None]]:
        consumer = getattr(self.app, "_consumer", None)
        if consumer is None:
            return {}
        try:
            assignment = consumer.assignment()
        except Exception:  # noqa: BLE001 - not started / rebalancing: nothing to report
            return {}
        committed = getattr(consumer, "_committed_offset", None) or {}
        monitor = self.app.monitor
        out: dict[tuple[str, int], tuple[int | None, int | None]] = {}
        for tp in assignment:
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - highwater unknown until the first fetch
                high = None
            if high is None:
                high = monitor.tp_end_offsets.get(tp)
            if high is None:
                continue
            done = committed.get(tp) if hasattr(committed, "get") else None
            if done is None:
                done = monitor.tp_committed_offsets.get(tp)
            read = monitor.tp_read_offsets.get(tp)
            out[(tp.topic, tp.partition)] = (
                None if done is None else max(0, high - done),
                None if read is None else max(0, high - (read + 1)),
            )
        return out


def table_size(table: Any) -> int:
    """Keys of a Faust table on this worker's active partitions (a full key scan)."""
    try:
        return len(table)
    except Exception:  # noqa: BLE001 - stores closing during a rebalance: report nothing new
        log.debug("table size sample failed", exc_info=True)
        return -1


def _json_doc(raw: Any) -> dict:
    try:
        doc = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _json_field(raw: Any, name: str) -> Any:
    return _json_doc(raw).get(name)


_ACTIVE: VrecMetrics | None = None


def install(vrec: VrecApp) -> VrecMetrics:
    """Create the metrics of ``vrec``'s worker and attach the sensor (idempotent per app)."""
    global _ACTIVE
    app = vrec.app
    existing = getattr(app, "_vrec_metrics", None)
    if existing is not None:
        return existing
    topics = vrec.runtime.settings.streaming.topics
    disable_created_metrics()  # no *_created series: they only double the exposition
    metrics = VrecMetrics()
    sensor = VrecSensor(
        metrics,
        interaction_topics=(topics.full("views"), topics.full("purchases")),
        recommendations_topic=topics.full("recommendations"),
        dead_letters_topic=topics.full("dead_letters"),
    )
    app.sensors.add(sensor)
    metrics.registry.register(_SampledCollector(app, model_id=lambda: vrec.runtime.model_id))
    app._vrec_metrics = metrics  # type: ignore[attr-defined]
    _ACTIVE = metrics
    return metrics


def active() -> VrecMetrics | None:
    """The metrics of this process's worker, if installed."""
    return _ACTIVE


def observe_sent(
    topic: str,
    count: int,
    futures: Iterable[asyncio.Future],
    recommendations: Sequence[Recommendation] = (),
) -> None:
    """Count ``count`` records sent to ``topic`` as whole batches (``futures``: their
    deliveries) once acknowledged, or as send errors (no-op without installed metrics); the
    sensor's hooks see only records sent one by one through a Faust topic. ``recommendations``:
    the records, when they are lists (counted per strategy, their latency observed). No
    futures: the records went through a Faust topic, whose sensor counts them."""
    m = _ACTIVE
    futures = list(futures)
    if m is None or not count or not futures:
        return
    waiting = len(futures)

    def done(fut: asyncio.Future) -> None:
        nonlocal waiting
        if waiting <= 0:  # already counted as failed
            return
        if fut.cancelled() or fut.exception() is not None:
            m.send_errors.labels(topic).inc(count)
            waiting = 0
            return
        waiting -= 1
        if waiting == 0:
            m.messages_out.labels(topic).inc(count)
            for rec in recommendations:
                m.recommendation_delivered(rec.strategy, rec.event_id, rec.produced_ts)

    for fut in futures:
        fut.add_done_callback(done)


def observe_encode(batch_size: int, seconds: float, source: str = "products") -> None:
    """Record one encoder call (no-op when the worker has no metrics installed)."""
    if _ACTIVE is not None:
        _ACTIVE.observe_encode(batch_size, seconds, source)
