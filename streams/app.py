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
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = App(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=faust_credentials(settings),  # VREC_KAFKA_* (SASL / SSL)
        store=settings.table_store,
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move on after this long (Faust's default is 60 s).
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.session_timeout_s,
        producer_linger=settings.producer_linger_s,
        producer_max_batch_size=settings.producer_batch_bytes,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind=settings.web_host,  # 127.0.0.1 unless the operator opens it
        web_host=_canonical_host(settings.web_host),  # how other workers reach this one
        # Faust's /router, /table, /graph, /performance and stats pages: off unless asked for,
        # and then behind the web token (streams/web/auth.py)
        web_router_enabled=settings.web_debug_pages,
        web_tables_enabled=settings.web_debug_pages,
        web_graph_enabled=settings.web_debug_pages,
        web_stats_enabled=settings.web_debug_pages,
        web_metrics_enabled=settings.web_debug_pages,
        table_cleanup_interval=3600.0,
        # a running worker seeks taken-over partitions before they are fetched (streams/recovery.py)
        TableManager=SeekFirstTableManager,
        autodiscover=False,
    )
    topics = Topics.declare(app, settings)
    tables = Tables.declare(app, settings)
    rt = Runtime(settings)
    dead = DeadLetterSink(topics.dead_letters)
    if "encode" in settings.role_set:
        encode.register(app, topics, rt, dead)
    if "recommend" in settings.role_set:
        ingest.register(app, topics, rt, dead)
        users.register(app, topics, tables, rt, dead)
        replica.register(app, topics, rt, dead)

    @app.on_rebalance_complete.connect
    async def _mirror_stale(sender, **_kw) -> None:  # noqa: ANN001 - Faust signal signature
        # Assigned partitions may have changed: rebuild the partition mirrors on the next batch.
        rt.partitions.loaded = False

    vrec = VrecApp(app, topics, tables, rt, dead)
    if settings.web_enabled:
        from streams.web import register as register_web

        register_web(vrec)
    return vrec
