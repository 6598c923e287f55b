"""The users agent's logic in-process, without Kafka: the same fold, ranking and day close.

:class:`OfflineUsers` feeds interactions and clock marks through
:func:`~streams.userbatch.fold_batch`, :func:`~streams.userbatch.rank_batch` and
:func:`~streams.userbatch.close_days_slice` over plain dicts standing in for the tables, in
micro-batches of ``batch_max`` records of one partition, split at clock marks as the agent
splits them. Given the same records in the same order and the same batch boundaries it
publishes the lists the worker publishes (``batch_max=1``: one list per event, the boundaries
the worker has too); ``vrec eval --baseline hybrid`` runs the history through it.
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.catalogue import Catalogue
from streams.events import Interaction, Recommendation, Tick
from streams.experiment import from_settings
from streams.ranking import top_trending
from streams.recommend import variant_configs
from streams.runtime import PartitionStates
from streams.settings import Settings
from streams.userbatch import (
    FoldConfig,
    InputRecord,
    close_days_slice,
    fold_batch,
    rank_batch,
    ranking_for,
)
from streams.userstate import UserState


class OfflineUsers:
    """One user-events partition folded and ranked in-process."""

    def __init__(self, settings: Settings, catalogue: Catalogue, model_id: str = "offline") -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.model_id = model_id
        self.fold_cfg = FoldConfig.from_settings(settings)
        self.experiment = from_settings(settings)
        self.rank_cfgs = variant_configs(settings, self.experiment)
        self.part = PartitionStates(settings.popularity, settings.users.kind_weights).get(0)
        self.users: dict[bytes, bytes] = {}
        self.recommendations: list[Recommendation] = []
        self.offset = 0  # the next user-events offset

    def feed(self, events: Iterable[Interaction | Tick]) -> None:
        """Fold and rank ``events`` in order (batches of ``batch_max``, split at clock marks)."""
        pending: list[InputRecord] = []
        for event in events:
            record = InputRecord(0, self.offset, event.to_bytes())
            self.offset += 1
            if isinstance(event, Tick):
                self._fold(pending)
                pending = []
                self._close(event, record.offset)
                continue
            pending.append(record)
            if len(pending) >= self.settings.batch_max:
                self._fold(pending)
                pending = []
        self._fold(pending)

    def last_lists(self) -> dict[str, Recommendation]:
        """Each user's newest list of their own variant."""
        own = self.experiment.assign if self.experiment is not None else None
        out: dict[str, Recommendation] = {}
        for rec in self.recommendations:
            if own is None or (rec.variant or "") == own(rec.user_id):
                out[rec.user_id] = rec
        return out

    def _fold(self, records: list[InputRecord]) -> None:
        if not records:
            return
        folded = fold_batch(
            records,
            partition=0,
            part=self.part,
            users=lambda u: self.users.get(u.encode()),
            catalogue=self.catalogue,
            cfg=self.fold_cfg,
        )
        if folded.states:
            ranking = ranking_for(self.part, self.catalogue, self.rank_cfgs, self.experiment)
            self.recommendations += rank_batch(folded, ranking, model_id=self.model_id)
        self.users.update(folded.writes.users)

    def _close(self, tick: Tick, offset: int) -> None:
        if not self.settings.day_close_refresh:
            return
        part = self.part
        closing = part.active.closing(0, part.trending.bucket_of(tick.ts))
        if not closing:
            return
        ranking = ranking_for(part, self.catalogue, self.rank_cfgs, self.experiment)
        order = sorted(closing)  # in slices, as the agent closes them
        for start in range(0, len(order), self.settings.day_close_slice):
            chunk = order[start : start + self.settings.day_close_slice]
            states = {
                u: UserState.from_bytes(raw) for u in chunk if (raw := self.users.get(u.encode()))
            }
            done = close_days_slice(
                0,
                {u: closing[u] for u in chunk},
                states,
                ranking,
                tick_ts=tick.ts,
                as_of=offset,
                model_id=self.model_id,
            )
            self.recommendations += done.recommendations
            self.users.update(done.users)
            for user_id in chunk:
                for day in closing[user_id]:
                    part.active.discard(0, day, user_id)


def replay_history(
    settings: Settings, catalogue: Catalogue, history: Iterable[Interaction]
) -> tuple[dict[str, list[str]], list[str]]:
    """The live core over a history, as ``vrec eval`` replays it: events in time order (stable
    within a time), then a clock mark closing the last day when ``day_close_refresh`` is on.

    Returns each user's last list (item ids, their own variant's) and the trending list after
    the history. This is the offline entry point of the one ranker: evaluation, experiments
    and benches call it instead of a re-implementation.
    """
    users = OfflineUsers(settings, catalogue)
    events: list[Interaction | Tick] = sorted(history, key=lambda e: e.ts)
    if events and settings.day_close_refresh:
        day = settings.trending_bucket_s
        events.append(Tick(ts=(max(e.ts for e in events) // day + 1) * day))
    users.feed(events)
    lists = {u: [i.item_id for i in r.items] for u, r in users.last_lists().items()}
    return lists, [s.item_id for s in top_trending(users.part.trending, settings.top_k)]
