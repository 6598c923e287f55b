"""The Faust application: topics -> agents -> tables/stores -> output.

products ──encode──> vector store + item-embeddings
views ─┐
       ├─ingest──> user-events ──users──> users table, trending table ──> recommendations
purchases┘
(bad records from any agent) ──> dead-letters
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from streams import faust_compat
from streams.agents import encode, ingest, replica, users
from streams.deadletters import DeadLetterSink
from streams.kafka_security import faust_credentials
from streams.producer import App
from streams.recovery import SeekFirstTableManager
from streams.runtime import Runtime
from streams.settings import Settings
from streams.tables import Tables
from streams.topics import Topics


@dataclass
class VrecApp:
    app: faust.App
    topics: Topics
    tables: Tables
    runtime: Runtime
    dead_letters: DeadLetterSink


def _canonical_host(bind: str) -> str:
    """The host name in this worker's URL: the bind address, or the machine's name for a
    wildcard bind."""
    if bind in ("", "0.0.0.0", "::"):
        import socket

        return socket.gethostname()
    return bind


def build_app(settings: Settings) -> VrecApp:
    streaming, worker, web = settings.streaming, settings.worker, settings.web
    worker.data_dir.mkdir(parents=True, exist_ok=True)
    faust_compat.apply(worker.faust_fast_dispatch)  # Faust's per-message tasks (pinned 0.15.3)
    # aiokafka fetches what Faust paused, and stalls (0.15.3); its two waits, shortened
    faust_compat.apply_fetch_pause(wait_s=worker.fetch_wait_s, backoff_s=worker.fetch_backoff_s)
    app = App(
        streaming.app_id,
        broker=streaming.broker_url,
        broker_credentials=faust_credentials(streaming),  # VREC_KAFKA_* (SASL / SSL)
        store=settings.tables.store,
        datadir=str(worker.data_dir / "faust"),
        topic_partitions=streaming.partitions,
        topic_replication_factor=1,
        processing_guarantee=streaming.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move on after this long (Faust's default is 60 s).
        broker_session_timeout=streaming.session_timeout_s,
        broker_rebalance_timeout=streaming.session_timeout_s,
        producer_linger=streaming.producer_linger_s,
        producer_max_batch_size=streaming.producer_batch_bytes,
        web_enabled=web.enabled,
        web_port=web.port,
        web_bind=web.host,  # 127.0.0.1 unless the operator opens it
        web_host=_canonical_host(web.host),  # how other workers reach this one
        # Faust's /router, /table, /graph, /performance and stats pages: off unless asked for,
        # and then behind the web token (streams/web/auth.py)
        web_router_enabled=web.debug_pages,
        web_tables_enabled=web.debug_pages,
        web_graph_enabled=web.debug_pages,
        web_stats_enabled=web.debug_pages,
        web_metrics_enabled=web.debug_pages,
        table_cleanup_interval=3600.0,
        # a running worker seeks taken-over partitions before they are fetched (streams/recovery.py)
        TableManager=SeekFirstTableManager,
        autodiscover=False,
    )
    topics = Topics.declare(app, streaming)
    tables = Tables.declare(app, streaming.partitions)
    rt = Runtime(settings)
    dead = DeadLetterSink(topics.dead_letters)
    if "encode" in worker.roles:
        encode.register(app, topics, rt, dead)
    if "recommend" in worker.roles:
        ingest.register(app, topics, rt, dead)
        users.register(app, topics, tables, rt, dead)
        replica.register(app, topics, rt, dead)

    @app.on_rebalance_complete.connect
    async def _mirror_stale(sender, **_kw) -> None:  # noqa: ANN001 - Faust signal signature
        # Assigned partitions may have changed: rebuild the partition mirrors on the next batch.
        rt.partitions.loaded = False

    vrec = VrecApp(app, topics, tables, rt, dead)
    if web.enabled:
        from streams.web import register as register_web

        register_web(vrec)
    return vrec
