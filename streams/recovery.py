"""Table recovery that seeks the stream partitions *before* it lets them be fetched.

faust-streaming 0.15.3's ``Recovery.on_recovery_completed`` resumes the newly assigned stream
partitions, then seeks them to their committed offsets, then resumes flow control (which clears
the stream queues). Records fetched in that window are dropped while the fetcher's read offset
moves past them, so their re-fetched copies are skipped as "already read" and later offsets get
committed: a worker that takes over a dead worker's partitions lost a block of events in about
1 run of 12 (tests/integration/test_scale_out.py, ``-m takeover``).

:class:`SeekFirstRecovery` does the same steps in a safe order on every recovery: seek to the
committed offsets and clear/resume flow control first, resume the partitions last. (Until
2026-12-01 its docstring said the first recovery kept Faust's order; a flag meant for that
shadowed mode's ``Service._started`` event, was always truthy, and every recovery, the
measured ones included, ran the new order.)

The seek to the committed offsets cannot bring back records of a partition without a committed
offset. A worker restarted after a SIGKILL before its first commit was found (about one restart
in four on 2 busy cores) with aiokafka's position at the end of every stream partition and
nothing delivered: records fetched while it started were dropped, and nothing moved the position
back; it logged "Worker ready" and read nothing. Partitions that this worker had not read from
before the recovery and that have no committed offset are therefore sought to their first
offset (:func:`reseek_offsets`) before they are resumed.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
from collections import Counter
from collections.abc import Mapping
from time import monotonic
from typing import Any

from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from mode import Service

#: The worker's exit code when the stream watchdog gives up (EX_TEMPFAIL).
EXIT_STALLED = 75


class SeekFirstRecovery(Recovery):
    #: Stalls in a row, each nudged without effect, after which the watchdog stops the worker
    #: (a supervisor -- Kubernetes, compose's restart policy -- starts a fresh one).
    give_up_after: int = 6
    #: Seconds an active changelog partition with records left may go without progress before
    #: the watchdog reports its fetch state and seeks it again (see ``_watch_active_recovery``).
    stall_after: float = 20.0

    @Service.task
    async def _watch_active_recovery(self) -> None:
        """Report, and nudge, active changelog partitions whose recovery has stopped.

        Seen once in 5 takeover runs: after a takeover, the survivor's recovery of the
        ``trending`` changelog (both partitions, from offset 0, records there) never received a
        record ("have offset -1") while the other changelogs recovered; the worker waited
        forever. The watchdog logs Faust's and aiokafka's view of such partitions (active,
        paused, position) and re-resumes and re-seeks them once per stall."""
        progress: dict[TP, tuple[int, float]] = {}
        nudged: set[TP] = set()
        while not self.should_stop:
            await self.sleep(5.0)
            if not self.in_recovery:
                progress.clear()
                nudged.clear()
                continue
            remaining = self.active_remaining()
            stuck = stalled_partitions(
                remaining, self.active_offsets, progress, monotonic(), self.stall_after
            )
            stuck = [tp for tp in stuck if tp not in nudged]
            if stuck:
                await self._nudge(stuck)
                nudged.update(stuck)

    @Service.task
    async def _watch_streams(self) -> None:
        """Report, and nudge, a worker that reads nothing although its streams have records.

        Seen about once in ten full test suites (tests/integration/test_pipeline.py, restart
        after SIGKILL before the first commit): the restarted worker logged "Worker ready" and
        then read nothing for minutes. Its report (2026-12-01) showed aiokafka's position at
        the end of every stream partition while Faust's read offset was still unset: the
        records had been fetched during the start-up recovery and dropped by Faust (flow
        stopped or partition not yet active), and with no committed offset the seek to the
        committed offsets did not move the position back.

        When no stream read offset has moved for ``stall_after`` seconds outside recovery, this
        asks the broker for the high-water marks (at most once per ``stall_after`` while the
        worker is idle); if some partition has records left, it logs Faust's and aiokafka's
        view, seeks those partitions back to what Faust has read (:func:`reseek_offsets`:
        its read offset, else the committed offset, else the beginning) and resumes the
        partitions and the flow. A record may be delivered twice; the agents are idempotent
        (user folds skip seen offsets and event ids, embeddings are upserts).

        Escalation (2026-12-02: CI saw a worker whose re-seeks changed nothing for 10 minutes,
        aiokafka's position staying where the seek put it): from the second futile nudge in a
        row with no message in the agents' hands, the fetcher is restarted too (its drain task
        is cancelled; it may wait on a fetch that never returns); after ``give_up_after``
        futile nudges the worker exits with :data:`EXIT_STALLED` for its supervisor to start a
        fresh one. Each report lists where every task waits (:func:`await_chain`)."""
        consumer = self.app.consumer
        last: dict[TP, Any] = {}
        since = checked = monotonic()  # last read-offset move; last broker check
        after_nudge: dict[TP, Any] | None = None  # read offsets right after the last nudge
        futile = 0  # nudges in a row after which nothing was read
        while not self.should_stop:
            await self.sleep(5.0)
            if self.in_recovery or not self.completed.is_set():
                last, since = {}, monotonic()
                continue
            tps = {tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)}
            now_offsets = {tp: consumer._read_offset.get(tp) for tp in tps}
            if now_offsets != last:
                last, since = now_offsets, monotonic()
                continue
            if not tps or monotonic() - max(since, checked) < self.stall_after:
                continue
            highwaters = await consumer.highwaters(*tps)
            busy = {m.tp for m in list(consumer._unacked_messages)}
            backlog = streams_with_backlog(highwaters, now_offsets)
            tails = dropped_tails(highwaters, now_offsets, dict(consumer._committed_offset), busy)
            stuck = sorted({*backlog, *tails}, key=str)
            checked = monotonic()  # an idle, caught-up worker asks once per stall_after
            if stuck:
                fetcher = fetcher_state(self.app)
                self.log.warning(
                    "Streams read nothing for %.0f s with records waiting on %s; state: %s; "
                    "fetcher: %s; aiokafka fetcher: %s; tasks:\n%s",
                    monotonic() - since,
                    stuck,
                    {tp: _fetch_state(consumer, tp) for tp in stuck},
                    fetcher,
                    kafka_fetcher_state(consumer),
                    "\n".join(
                        f"  {n} x {chain}"
                        for chain, n in sorted(
                            Counter(map(await_chain, asyncio.all_tasks())).items()
                        )
                    ),
                )
                futile = futile + 1 if now_offsets == after_nudge else 1
                action = stall_action(
                    futile,
                    idle=not busy,
                    draining=fetcher["draining"],
                    give_up_after=self.give_up_after,
                )
                if action == "exit":
                    self.log.critical(
                        "Streams read nothing after %d seeks and fetcher restarts; exiting "
                        "(code %d) so that the supervisor starts a fresh worker",
                        futile - 1,
                        EXIT_STALLED,
                    )
                    logging.shutdown()
                    os._exit(EXIT_STALLED)  # as a SIGKILL: every agent survives one
                if action == "restart":
                    try:
                        await asyncio.wait_for(self.app._stop_fetcher(), timeout=30.0)  # type: ignore[attr-defined]
                        self.log.warning("Restarted the fetcher (stall %d)", futile)
                    except asyncio.TimeoutError:  # the next futile stall counts towards "exit"
                        self.log.warning("The fetcher did not stop within 30 s (stall %d)", futile)
                earliest = await consumer.earliest_offsets(*stuck)
                offsets = reseek_offsets(
                    stuck, now_offsets, dict(consumer._committed_offset), earliest
                )
                await consumer.seek_wait(offsets)  # type: ignore[attr-defined]
                consumer.resume_partitions(tps)
                consumer.resume_flow()
                await self.app._fetcher.maybe_start()  # type: ignore[attr-defined]
                self.log.warning("Re-sought %s and resumed the stream partitions", offsets)
                after_nudge = {tp: consumer._read_offset.get(tp) for tp in tps}
                last, since = {}, monotonic()  # still stuck after stall_after: again

    async def _nudge(self, tps: list[TP]) -> None:
        consumer = self.app.consumer
        self.log.warning(
            "Active recovery stalled for %s s on %s; state: %s",
            self.stall_after,
            tps,
            {tp: _fetch_state(consumer, tp) for tp in tps},
        )
        consumer.resume_partitions(tps)
        offsets = {tp: max(self.active_offsets[tp] + 1, 0) for tp in tps}
        await consumer.seek_wait(offsets)  # type: ignore[attr-defined]
        self.log.warning("Re-resumed and re-sought %s to %s", tps, offsets)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Faust's version with the seeks and the queue clearing before the partition resume."""
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callback_coros = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callback_coros:
            await asyncio.wait(callback_coros)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        unread = {tp for tp in streams if consumer._read_offset.get(tp) is None}
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        fresh = sorted((tp for tp in unread if not consumer._committed_offset.get(tp)), key=str)
        if fresh:  # nothing read, nothing committed: from the start, whatever was fetched
            earliest = await consumer.earliest_offsets(*fresh)
            offsets = reseek_offsets(fresh, {}, {}, earliest)
            await self._wait(
                consumer.seek_wait(offsets),  # type: ignore[attr-defined]
                timeout=self.app.conf.broker_request_timeout,
            )
            self.log.info("Unread stream partitions without a commit start at %s", offsets)
        self.completed.set()
        self.app.flow_control.resume()  # clears the stream queues: nothing of `streams` yet
        consumer.resume_partitions(streams)
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()  # type: ignore[attr-defined]
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


def stall_action(futile: int, *, idle: bool, draining: bool, give_up_after: int) -> str:
    """What the stream watchdog does at a stall, the ``futile``-th in a row after nudges that
    changed nothing: "seek" (seek back and resume), "restart" (also start a fresh fetcher:
    its drain task ended, or a seek did not help and no agent holds a message -- the drain may
    wait on a fetch that never returns) or "exit" (``give_up_after`` futile nudges, idle)."""
    if idle and futile > give_up_after:
        return "exit"
    if not draining or (idle and futile > 1):
        return "restart"
    return "seek"


def stalled_partitions(
    remaining: Mapping[TP, int],
    offsets: Mapping[TP, int],
    progress: dict[TP, tuple[int, float]],
    now: float,
    stall_after: float,
) -> list[TP]:
    """Partitions with records left whose offset has not moved for ``stall_after`` seconds.

    ``progress`` (tp -> (offset last seen, when it was first seen)) is updated in place; call
    it at intervals with the recovery's remaining counts and read offsets."""
    stuck = []
    for tp, left in remaining.items():
        if left <= 0:
            progress.pop(tp, None)
            continue
        offset = offsets[tp]
        seen, since = progress.get(tp, (offset, now))
        if seen != offset:
            seen, since = offset, now
        progress[tp] = (seen, since)
        if now - since >= stall_after:
            stuck.append(tp)
    return stuck


def streams_with_backlog(
    highwaters: Mapping[TP, int | None], read_offsets: Mapping[TP, int | None]
) -> list[TP]:
    """Stream partitions with at least two records left whatever Faust's read offset means
    (the last record read, or after a seek the next one to read)."""
    return sorted(
        (
            tp
            for tp, high in highwaters.items()
            if high is not None and high - (read_offsets.get(tp) or 0) > 2
        ),
        key=str,
    )


def dropped_tails(
    highwaters: Mapping[TP, int | None],
    read_offsets: Mapping[TP, int | None],
    committed: Mapping[TP, int | None],
    busy: set[TP],
) -> list[TP]:
    """Stream partitions whose last records Faust read but never delivered: fewer than the
    two records :func:`streams_with_backlog` needs are left after its read offset, yet the
    committed offset stays below the high-water mark with no message of the partition in
    flight (``busy``: partitions with unacked messages). Seen after a restart: a single clock
    mark sent while the worker started was read, dropped, and never committed, so the test
    waited forever for it (tests/integration/test_day_close.py, 3 runs in 5 on 2 busy cores)."""
    return sorted(
        (
            tp
            for tp, high in highwaters.items()
            if high is not None
            and tp not in busy
            and read_offsets.get(tp) is not None
            and committed.get(tp) is not None
            and int(committed[tp]) < high  # type: ignore[arg-type]
        ),
        key=str,
    )


def reseek_offsets(
    tps: list[TP],
    read_offsets: Mapping[TP, int | None],
    committed: Mapping[TP, int | None],
    earliest: Mapping[TP, int],
) -> dict[TP, int]:
    """Where to fetch a stalled stream partition from: Faust's read offset (the last record
    it delivered, delivered again, or the next one after a seek), else the group's committed
    offset, else the partition's first offset."""
    out = {}
    for tp in tps:
        read = read_offsets.get(tp)
        if read is not None:
            out[tp] = read
        elif committed.get(tp) is not None:
            out[tp] = int(committed[tp])  # type: ignore[arg-type]
        else:
            out[tp] = int(earliest.get(tp) or 0)
    return out


def await_chain(task: asyncio.Future) -> str:
    """Where a task waits: its chain of awaited coroutines, outermost first, each as
    ``qualname:line``, ending with the future it waits on (for the stall report)."""
    get_coro = getattr(task, "get_coro", None)
    coro: Any = get_coro() if get_coro is not None else task
    parts = []
    for _ in range(64):
        if coro is None:
            break
        code = _first_attr(coro, ("cr_code", "gi_code", "ag_code"))
        if code is None and type(coro).__name__ in (
            "async_generator_asend",
            "async_generator_athrow",
        ):
            # the awaitable of ``async for``: follow it into its generator
            gens = [r for r in gc.get_referents(coro) if inspect.isasyncgen(r)]
            if gens:
                coro = gens[0]
                continue
        if code is None:
            parts.append(type(coro).__name__)
            break
        frame = _first_attr(coro, ("cr_frame", "gi_frame", "ag_frame"))
        parts.append(f"{code.co_qualname}:{frame.f_lineno if frame is not None else '-'}")
        coro = _first_attr(coro, ("cr_await", "gi_yieldfrom", "ag_await"))
    return " > ".join(parts)


def _first_attr(obj: Any, names: tuple[str, ...]) -> Any:
    """The first of ``names`` that ``obj`` has (coroutine, generator or async generator
    spellings of one attribute), else None."""
    return next((getattr(obj, n) for n in names if hasattr(obj, n)), None)


def fetcher_state(app: Any) -> dict[str, Any]:
    """Whether Faust's fetcher service runs and its drain task (the one that moves records
    from the consumer into the stream queues) is alive, and the app's rebalance flags."""
    fetcher = app._fetcher
    futures = list(getattr(fetcher, "_futures", ()))
    return {
        "started": fetcher._started.is_set(),
        "stopped": fetcher._stopped.is_set(),
        "crashed": fetcher._crashed.is_set(),
        "draining": fetcher._started.is_set() and any(not f.done() for f in futures),
        "tasks": len(futures),
        "rebalancing": app.rebalancing,
        "flow_control_active": app.flow_control.is_active(),
        "queued": sorted(q.qsize() for q in list(getattr(app.flow_control, "_queues", ()))),
    }


def kafka_fetcher_state(consumer: Any) -> dict[str, Any]:
    """aiokafka's fetcher behind Faust's consumer thread: whether its fetch routine runs, the
    nodes with a fetch in flight and the partitions with fetched records not yet handed out."""
    try:
        fetcher = consumer._thread._ensure_consumer()._fetcher
        task = fetcher._fetch_task
        return {
            "routine_done": task.done(),
            "routine_error": repr(task.exception())
            if task.done() and not task.cancelled()
            else None,
            "in_flight": sorted(map(str, fetcher._in_flight)),
            "buffered": sorted(map(str, fetcher._records)),
        }
    except Exception as exc:  # diagnostics only: never fail the watchdog
        return {"kafka_fetcher_error": repr(exc)}


def _fetch_state(consumer: Any, tp: TP) -> dict[str, Any]:
    """Faust's and aiokafka's view of ``tp``'s fetching, for the stall report."""
    state: dict[str, Any] = {
        "faust_active": tp in (consumer._active_partitions or ()),
        "faust_paused": tp in consumer._paused_partitions,
        "faust_buffered": tp in consumer._buffered_partitions,
        "read_offset": consumer._read_offset.get(tp),
        "flow_active": consumer.flow_active,
    }
    try:
        kafka = consumer._thread._ensure_consumer()
        tp_state = kafka._subscription.subscription.assignment.state_value(tp)
        state.update(
            kafka_paused=tp_state.paused,
            kafka_valid_position=tp_state.has_valid_position,
            kafka_position=tp_state.position if tp_state.has_valid_position else None,
            kafka_awaiting_reset=tp_state.awaiting_reset,
        )
    except Exception as exc:  # diagnostics only: never fail the watchdog
        state["kafka_state_error"] = repr(exc)
    return state


class SeekFirstTableManager(TableManager):
    """Faust's table manager with :class:`SeekFirstRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
