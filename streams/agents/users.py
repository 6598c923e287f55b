"""User agent: user-events -> fold into the user table -> rank -> recommendations.

State is exactly-once under at-least-once delivery: the user state keeps the last user-events
offset it folded per partition (and the recent event ids), so a redelivered event is skipped.

A clock mark (events.Tick) on user-events closes the days before it: every user active in
those days is re-ranked with the days' final popularity and co-purchase counts (a list computed
right after a user's event only saw the day so far) and published with trigger "day_close".
"""

from __future__ import annotations

import json
import logging

import faust

from streams.deadletters import DeadLetterSink
from streams.events import Interaction, Tick, is_tick
from streams.ranking import top_trending
from streams.recommend import TRENDING_KEY, rank_user, to_record
from streams.runtime import Runtime
from streams.settings import Settings
from streams.tables import Tables, active_key, copurchase_key, trending_key
from streams.topics import Topics
from streams.userstate import DecayConfig, UserState, fold_event

log = logging.getLogger(__name__)


def same_day_basket(state: UserState, ts: float, bucket_of) -> set[str]:
    """Items the user already bought in the same time bucket (day) as ``ts``."""
    day = bucket_of(ts)
    return {h.item_id for h in state.history if h.kind == "purchase" and bucket_of(h.ts) == day}


def popularity_count(state: UserState, event: Interaction, s: Settings) -> int:
    """How much an event adds to popularity: 0 for a repeat purchase of the same item inside
    the window (distinct buyers), else the sales channel's weight (1 by default)."""
    if event.kind == "purchase" and s.trending_distinct_buyers:
        previous = state.last_purchase.get(event.item_id)
        if previous is not None and event.ts - previous < s.trending_window_days * 86_400.0:
            return 0
    return s.trending_channel_weights.get(event.channel, 1) if event.channel else 1


def register(
    app: faust.App, topics: Topics, tables: Tables, rt: Runtime, dead: DeadLetterSink
) -> None:
    s = rt.settings
    decay = DecayConfig.from_settings(s)

    async def search(unit, limit, exclude):
        hits = await rt.in_store(rt.store.search, unit, limit, exclude=exclude, with_vectors=True)
        return [(h.item_id, h.vector) for h in hits]

    @app.timer(interval=s.trending_publish_s)
    async def publish_trending() -> None:
        """The list for users vrec has not seen yet, to the trending topic (changed lists only)."""
        for partition in sorted(rt.trending_dirty):
            rt.trending_dirty.discard(partition)
            trending = rt.trending_for(partition)
            rec = to_record(
                TRENDING_KEY,
                top_trending(trending, s.top_k),
                "trending",
                model_id=rt.model_id,
                event_id=None,
                event_ts=trending.newest_ts,
            )
            await topics.trending.send(key=str(partition).encode(), value=rec.to_bytes())

    async def close_days(partition: int, tick: Tick) -> None:
        """Re-rank and publish the users active in the partition's days before the tick's."""
        trending = rt.trending_for(partition)
        before = trending.bucket_of(tick.ts)
        closing = rt.active.closing(partition, before)
        for user_id in sorted(closing):
            raw = tables.users.get(user_id.encode())
            if raw:
                state = UserState.from_bytes(raw)
                ranked, strategy = await rank_user(
                    state,
                    rt=rt,
                    trending=trending,
                    copurchase=rt.copurchase_for(partition),
                    search=search,
                )
                rec = to_record(
                    user_id,
                    ranked,
                    strategy,
                    model_id=rt.model_id,
                    event_id=None,
                    event_ts=tick.ts,
                    trigger="day_close",
                )
                await topics.recommendations.send(key=user_id.encode(), value=rec.to_bytes())
            for bucket in closing[user_id]:  # after publishing: a crash re-ranks again
                rt.active.discard(partition, bucket, user_id)
                tables.active.pop(active_key(partition, bucket, user_id), None)
        if closing:
            log.info("day close on partition %d: %d users re-ranked", partition, len(closing))

    @app.agent(topics.user_events, name="users")
    async def users(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            if not rt.trending_loaded:
                rt.load_mirrors(tables.trending, tables.copurchase, tables.active)
            msg = ev.message
            try:
                doc = json.loads(ev.value)
                if is_tick(doc):
                    if s.day_close_refresh:
                        await close_days(msg.partition, Tick.model_validate(doc))
                    continue
                event = Interaction.model_validate(doc)
            except ValueError as exc:  # user-events is internal; still never crash
                await dead.send(f"invalid user event: {exc}", ev.value, message=msg, stage="users")
                continue
            key = event.user_id.encode()
            raw = tables.users.get(key)
            state = UserState.from_bytes(raw) if raw else UserState(event.user_id)
            if state.already_folded(msg.partition, msg.offset, event.event_id):
                continue
            vec = rt.vectors.get(event.item_id)
            if vec is None:
                await dead.send(
                    f"unknown item_id {event.item_id!r}", ev.value, message=msg, stage="users"
                )
                continue
            trending = rt.trending_for(msg.partition)
            co = rt.copurchase_for(msg.partition)
            changed_rows: list[str] = []
            if event.kind == "purchase" and s.ranker == "hybrid":
                basket = same_day_basket(state, event.ts, trending.bucket_of)
                if event.item_id not in basket:
                    changed_rows = co.add_basket_item(event.item_id, basket)
            count = popularity_count(state, event, s)  # before the fold: needs the old state
            state = fold_event(
                state,
                item_id=event.item_id,
                kind=event.kind,
                ts=event.ts,
                vector=vec,
                config=decay,
                history_len=s.history_len,
                max_seen=s.max_seen,
                partition=msg.partition,
                offset=msg.offset,
                event_id=event.event_id,
            )
            if count:
                bucket, expired = trending.add(event.item_id, event.kind, event.ts, count)
            else:  # this customer's purchase of the item is already counted in the window
                bucket, expired = None, []
            rt.trending_dirty.add(msg.partition)
            ranked, strategy = await rank_user(
                state,
                rt=rt,
                trending=trending,
                copurchase=co,
                search=search,
            )
            rec = to_record(
                event.user_id,
                ranked,
                strategy,
                model_id=rt.model_id,
                event_id=event.event_id,
                event_ts=event.ts,
            )
            await topics.recommendations.send(key=key, value=rec.to_bytes())
            # Durable state last: a crash before this line redelivers the event.
            if bucket is not None:
                counts = trending.counts(bucket, event.item_id)
                tables.trending[trending_key(msg.partition, bucket, event.item_id)] = json.dumps(
                    counts
                ).encode()
            for old_bucket, item_id in expired:
                tables.trending.pop(trending_key(msg.partition, old_bucket, item_id), None)
            if s.day_close_refresh:
                day = trending.bucket_of(event.ts)
                if trending.in_window(day) and rt.active.add(msg.partition, day, event.user_id):
                    tables.active[active_key(msg.partition, day, event.user_id)] = b"1"
                oldest = trending.oldest_bucket
                if oldest is not None:  # forget days no mark closed in time
                    for old_day, user_id in rt.active.expire(msg.partition, oldest):
                        tables.active.pop(active_key(msg.partition, old_day, user_id), None)
            for item_id in changed_rows:
                tables.copurchase[copurchase_key(msg.partition, item_id)] = json.dumps(
                    dict(co.row(item_id))
                ).encode()
            tables.users[key] = state.to_bytes()
