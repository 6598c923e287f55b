"""Users agent: user-events -> micro-batches -> fold, rank (streams.userbatch) -> tables, topics.

The agent is a shell: it takes up to ``batch_max`` records (waiting at most ``batch_within_s``;
longer while the worker is behind, :mod:`streams.agents.batching`), groups them by partition,
hands each group to :func:`~streams.userbatch.fold_batch` and
:func:`~streams.userbatch.rank_batch`, then publishes one recommendation per user of the batch
and writes the tables (user states last, once the broker has the shared cells: a crash before
that redelivers the batch, and the offsets kept in each user state and each shared cell make the
redelivery fold once).

Each batch's shared cells wait until the previous batch's user states are on the broker, so a
crash leaves at most one batch half written; a redelivered batch that ends before the restored
counts do is published as of their offset (``PartitionState.counted_through``).

A clock mark (events.Tick) on user-events closes the days before it: every user active in those
days is re-ranked with the days' final popularity and co-purchase counts (a list computed right
after a user's event only saw the day so far) and published with trigger "day_close". The close
runs in slices of ``day_close_slice`` users and yields to the event loop between them, so
commits, heartbeats and rebalances go on during a long close.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import cast

import faust
import faust.streams as faust_streams

from streams import metrics
from streams.agents.batching import take_batches
from streams.deadletters import DeadLetterSink
from streams.events import Recommendation, Tick, is_tick, json_object
from streams.experiment import from_settings
from streams.producer import DurableProducer
from streams.ranking import top_trending
from streams.recommend import (
    TRENDING_KEY,
    Candidates,
    Ranking,
    to_record,
    variant_configs,
    visual_queries,
)
from streams.runtime import Runtime
from streams.tables import Tables
from streams.topics import Topics, key_partition
from streams.userbatch import (
    FoldConfig,
    InputRecord,
    close_days_slice,
    fold_batch,
    rank_batch,
    ranking_for,
)
from streams.userstate import UserState

log = logging.getLogger(__name__)


def as_current_event(event: faust.EventT) -> None:
    """Make ``event`` this task's current event for the table stores.

    faust-streaming 0.15.3: take_events() reads the stream in a background task, so the agent's
    task has no current event; the table API then raises "Cannot modify table key from outside
    of stream iteration" and the RocksDB store cannot pick its partition database (both read the
    ``current_event`` context variable). Only the context variable is set here:
    ``Stream._set_current_event`` would also replace the stream's own ``current_event``, which
    take_events' buffer reads for the next record -- a record of the other partition was then
    buffered twice and the real one lost (seen on two partitions).
    """
    faust_streams._current_event.set(weakref.ref(event))


def _is_tick(value: bytes) -> bool:
    return value is not None and b'"tick"' in value and is_tick(json_object(value))


def register(
    app: faust.App, topics: Topics, tables: Tables, rt: Runtime, dead: DeadLetterSink
) -> None:
    s = rt.settings  # the ranking's variants are built from the whole settings
    fold_cfg = FoldConfig.from_settings(s)
    experiment = from_settings(s)
    rank_cfgs = variant_configs(s, experiment)
    batching, day_close = s.users, s.day_close
    guarantee = s.streaming.processing_guarantee
    top_k, publish_s = s.ranking.top_k, s.popularity.publish_s
    visual = any(cfg.ranker != "hybrid" for cfg in rank_cfgs.values())
    parts = rt.partitions

    def stored_state(user_id: str) -> bytes | None:
        return tables.users.data.get(user_id.encode())

    async def candidates_for(
        states: Mapping[str, UserState], ranking: Ranking
    ) -> dict[str, dict[str, Candidates]] | None:
        """The visual ranker's nearest neighbours, variant -> user, from the store thread."""
        if not visual:
            return None
        queries = {
            ctx.config.variant: (visual_queries({u: states[u] for u in users}, ctx), ctx)
            for ctx, users in ranking.groups(states)
            if ctx.config.ranker != "hybrid"
        }

        def search_all() -> dict[str, dict[str, Candidates]]:
            return {
                variant: {
                    u: [
                        (h.item_id, h.vector)
                        for h in rt.store.search(
                            unit, 2 * ctx.config.k, exclude=exclude, with_vectors=True
                        )
                    ]
                    for u, (unit, exclude) in found.items()
                }
                for variant, (found, ctx) in queries.items()
            }

        return await rt.in_store(search_all) if queries else {}

    @app.timer(interval=publish_s)
    async def publish_trending() -> None:
        """The list for users vrec has not seen yet, to the trending topic (changed lists only)."""
        for partition in sorted(parts.dirty):
            parts.dirty.discard(partition)
            trending = parts.trending(partition)
            rec = to_record(
                TRENDING_KEY,
                top_trending(trending, top_k),
                "trending",
                model_id=rt.model_id,
                event_id=None,
                event_ts=trending.newest_ts,
            )
            await topics.trending.send(key=str(partition).encode(), value=rec.to_bytes())

    producer = cast(DurableProducer, app.producer)
    direct = guarantee != "exactly_once"

    async def write(
        table: faust.TableT, partition: int, writes: Mapping[bytes, bytes | None]
    ) -> list[asyncio.Future]:
        """Apply a batch's writes to a table and its changelog; returns the changelog sends'
        delivery futures.

        The changelog records go straight to the producer, as whole record batches
        (DurableProducer.send_records): Faust's ``table[key] = value`` hands each one to a
        buffer drained by one task, one loop iteration per record (and stalls the stream when
        more than 100 wait), which cost more than the ranking. The offset commit's flush still
        waits for them (DurableProducer.flush flushes aiokafka).
        Under exactly_once the table API keeps the writes inside Faust's transaction.
        """
        if not direct:
            for key, value in writes.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
            return []
        store, records = table.data, []
        for key, value in writes.items():
            if value is None:
                if key not in store:
                    continue
                del store[key]
            else:
                store[key] = value
            records.append((key, value))
        if not records:
            return []
        changelog = table.changelog_topic.get_topic_name()
        return await producer.send_records(changelog, partition, records)

    # delivery futures of the last batch's user states: the next batch's shared cells wait for
    # them, so a crash leaves at most one batch with shared cells on the broker and user states
    # missing (a redelivered batch is then ranked with that batch's counts, no later ones)
    users_in_flight: list[asyncio.Future] = []

    recs_topic, n_partitions = topics.recommendations.get_topic_name(), s.streaming.partitions

    async def publish(recs: Sequence[Recommendation]) -> None:
        """Send the lists keyed by user, as record batches (one by one through Faust's topic
        under exactly_once); counted and timed when acknowledged (streams/metrics.py)."""
        records = []
        for rec in recs:
            key = rec.user_id.encode()
            records.append((key_partition(key, n_partitions), key, rec.to_bytes()))
        sent = await producer.send_out(topics.recommendations, records, transactions=not direct)
        metrics.observe_sent(recs_topic, len(records), sent, recommendations=recs)

    async def fold_and_publish(partition: int, events: Sequence[faust.EventT]) -> None:
        if not events:
            return
        part = parts.get(partition)
        records = [InputRecord(partition, ev.message.offset, ev.value) for ev in events]
        folded = fold_batch(
            records,
            partition=partition,
            part=part,
            users=stored_state,
            catalogue=rt.catalogue,
            cfg=fold_cfg,
        )
        by_offset = {ev.message.offset: ev.message for ev in events}
        for reason, rec in folded.dead:
            await dead.send(reason, rec.value, message=by_offset[rec.offset], stage="users")
        online = metrics.active()
        if online is not None and folded.hits:
            online.observe_hits(folded.hits)
        if not folded.states:
            return
        ranking = ranking_for(part, rt.catalogue, rank_cfgs, experiment)
        candidates = await candidates_for(folded.states, ranking)
        await publish(rank_batch(folded, ranking, model_id=rt.model_id, candidates=candidates))
        parts.dirty.add(partition)
        # Durable state last: a crash before these lines redelivers the batch. The shared
        # cells must be on the broker before any user state that counts them (the producer may
        # send a full batch of one topic before an older one of another): a redelivered batch
        # then finds either the user state (and skips the event) or the cell's offset (and
        # skips that cell), never a user state without its counts.
        if users_in_flight:
            await asyncio.gather(*users_in_flight)
            users_in_flight.clear()
        shared = [
            *await write(tables.trending, partition, folded.writes.trending),
            *await write(tables.copurchase, partition, folded.writes.copurchase),
            *await write(tables.active, partition, folded.writes.active),
        ]
        if shared:
            await asyncio.gather(*shared)
        users_in_flight.extend(await write(tables.users, partition, folded.writes.users))

    async def close_days(partition: int, tick: Tick, offset: int) -> None:
        """Re-rank and publish the users active in the partition's days before the tick's."""
        part = parts.get(partition)
        closing = part.active.closing(partition, part.trending.bucket_of(tick.ts))
        ranking = ranking_for(part, rt.catalogue, rank_cfgs, experiment)
        order = sorted(closing)
        for start in range(0, len(order), day_close.users_per_slice):
            chunk = order[start : start + day_close.users_per_slice]
            states = {}
            for user_id in chunk:
                raw = stored_state(user_id)
                if raw:
                    states[user_id] = UserState.from_bytes(raw)
            done = close_days_slice(
                partition,
                {u: closing[u] for u in chunk},
                states,
                ranking,
                tick_ts=tick.ts,
                as_of=offset,
                model_id=rt.model_id,
                candidates=await candidates_for(states, ranking),
            )
            await publish(done.recommendations)
            await write(tables.users, partition, done.users)
            for user_id in chunk:  # after publishing: a crash re-ranks again
                for bucket in closing[user_id]:
                    part.active.discard(partition, bucket, user_id)
            await write(tables.active, partition, done.active)
            await asyncio.sleep(0)  # let commits, heartbeats and other agents run
        if closing:
            log.info("day close on partition %d: %d users re-ranked", partition, len(closing))

    @app.agent(topics.user_events, name="users")
    async def users(stream: faust.StreamT) -> None:
        async for batch in take_batches(stream, batching):
            if not parts.loaded:
                parts.load(tables.trending, tables.copurchase, tables.active)
            by_partition: dict[int, list[faust.EventT]] = {}
            for ev in batch:
                by_partition.setdefault(ev.message.partition, []).append(ev)
            for partition, events in sorted(by_partition.items()):
                as_current_event(events[-1])  # every event of the group has its partition
                segment: list[faust.EventT] = []
                for ev in events:
                    try:
                        tick = Tick.model_validate_json(ev.value) if _is_tick(ev.value) else None
                    except ValueError as exc:
                        reason = f"invalid clock mark: {exc}"
                        await dead.send(reason, ev.value, message=ev.message, stage="users")
                        continue
                    if tick is None:
                        segment.append(ev)
                        continue
                    await fold_and_publish(partition, segment)
                    segment = []
                    if day_close.refresh:
                        await close_days(partition, tick, ev.message.offset)
                await fold_and_publish(partition, segment)
