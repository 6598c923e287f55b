"""Workarounds for faust-streaming 0.15.3 (pinned in pyproject.toml): a fast path for its
per-message dispatch, fetch stalls on the changelogs it pauses, and the consumer's fetch waits
(below).

Faust's fetch loop (``faust.transport.consumer.Consumer._drain_messages``) hands every message to
the conductor with ``await self.wait_first(callback(message), self.suspend_flow.wait())``.
``mode.Service.wait_first`` wraps each argument *and* the service's ``stopped`` and ``crashed``
events in a task, waits with ``asyncio.wait`` and cancels the three losers: four tasks and
several event-loop turns per message, although the callback almost always finishes without ever
suspending (it decodes the message and puts it on a stream's queue that has room). A py-spy
profile of a worker recovering 60,000 user states showed its event loop busy a third of the
time, much of it creating and cancelling those tasks (``ensure_future``, ``Event.wait``,
``asyncio.wait``), and the loop turning between them.

:func:`apply` gives the consumer a ``wait_first`` that first runs such a callback one step in
the caller's task: if it finishes there, nothing could have interrupted it (there was no
suspension point) and no task is made; if it suspends, the rest of it runs in a task under
Faust's own ``wait_first`` exactly as before, so a rebalance (``suspend_flow``) or a stop still
interrupts it. Any other call (an event, a timeout, a flag already set) goes to Faust's method.

Recovery has the same pattern: ``Recovery._slurp_changelogs`` takes each changelog record with
``await asyncio.wait_for(changelog_queue.get(), timeout=5.0)``, a task per record although the
queue is rarely empty while a changelog is read. :func:`apply` gives that module an ``asyncio``
whose ``wait_for`` first runs the awaitable one step the same way (:func:`fast_wait_for`); the
5 s timeout still applies whenever the queue is empty.

``VREC_FAUST_FAST_DISPATCH=false`` leaves Faust's code alone.

**Fetch stalls** (:func:`apply_fetch_pause`, always on): Faust "pauses" a partition only in its
own bookkeeping (``Consumer.pause_partitions`` drops it from the set it passes to aiokafka's
``fetched_records``); aiokafka (0.14.0) goes on fetching it. Its records then sit unconsumed in
the fetcher's buffer, and while any buffered partition is younger than aiokafka's
``prefetch_backoff`` (0.1 s) the fetcher sends *no* fetch request to that broker, for any
partition. The partitions Faust keeps paused are the changelogs of the worker's own tables (read
only in recovery): the first record a worker writes to each changelog came back and held every
input for 100 ms. The bench showed it as 100-250 ms latencies in the first ~0.4 s of every run
(one stall per table). :func:`apply_fetch_pause` makes aiokafka's pauses of the changelogs
follow Faust's: each fetch call (in Faust's consumer thread, where aiokafka runs) pauses in
aiokafka the changelog partitions Faust does not ask for, drops what the fetcher buffered for
them (their position stays at the first record not handed out, so nothing is skipped) and
resumes them when Faust asks for them again (recovery, standbys).

**Fetch waits** (:func:`tune_fetcher`, with the above): Faust creates aiokafka's consumer with a
1.5 s fetch wait and aiokafka's fetcher holds back fetches for 0.1 s while records it fetched sit
untaken; the two hops of a worker (ingest, users agent) share that consumer, and under a backlog
each could stall the other (the worker's loop was idle ~1/3 of an unthrottled run).
``VREC_FETCH_WAIT_S`` (0.05) and ``VREC_FETCH_BACKOFF_S`` (0.005) replace them.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Coroutine, Generator
from typing import Any

PINNED = "0.15.3"  # the faust-streaming release whose Consumer._drain_messages this reads

_original_wait_first: Any = None
_original_fetch_records: Any = None
_fetch_waits: tuple[float, float] | None = None  # (wait_s, backoff_s) for tune_fetcher


@types.coroutine
def _rest_of(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Run ``coro`` on from a suspension that yielded ``yielded``, as the task running this
    would have run it (results and exceptions, cancellation included, pass through)."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:  # thrown into the task: hand it to the coroutine
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """A coroutine for the rest of ``coro`` after a first step that yielded ``yielded``."""
    return await _rest_of(coro, yielded)


async def fast_wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
    """``Consumer.wait_first`` with the one-step fast path (see the module docstring)."""
    from mode.services import WaitResults

    first = coros[0] if coros else None
    interrupted = self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set()
    if timeout is not None or len(coros) != 2 or not inspect.iscoroutine(first) or interrupted:
        return await _original_wait_first(self, *coros, timeout=timeout)
    other = coros[1]
    try:
        done, value = _first_step(first)
    except BaseException:
        _close(other)
        raise
    if done:  # finished without suspending
        _close(other)
        return WaitResults([first], [value], False)
    return await _original_wait_first(self, value, other)


async def fast_wait_for(aw: Any, timeout: float | None) -> Any:
    """``asyncio.wait_for`` without a task when ``aw`` is a coroutine that finishes at once."""
    if inspect.iscoroutine(aw):
        done, aw = _first_step(aw)
        if done:
            return aw
    return await asyncio.wait_for(aw, timeout)


def _first_step(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` one step in the caller's task: (True, its result) when it finished there,
    else (False, a coroutine for the rest of it, :func:`finish`). Its errors propagate."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, finish(coro, yielded)


class _RecoveryAsyncio(types.ModuleType):
    """``asyncio`` as ``faust.tables.recovery`` sees it: the module, with :func:`fast_wait_for`."""

    wait_for = staticmethod(fast_wait_for)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def _close(obj: Any) -> None:
    if inspect.iscoroutine(obj):
        obj.close()  # never started: no "never awaited" warning


def apply(enabled: bool = True) -> bool:
    """Install (or, ``enabled=False``, remove) the fast path on Faust's Consumer; False where
    faust-streaming is not the pinned release."""
    global _original_wait_first
    import faust
    import faust.tables.recovery as recovery
    from faust.transport.consumer import Consumer

    if faust.__version__ != PINNED:
        return False
    if _original_wait_first is None:
        _original_wait_first = Consumer.wait_first
    Consumer.wait_first = fast_wait_first if enabled else _original_wait_first
    recovery.asyncio = _RecoveryAsyncio("asyncio") if enabled else asyncio  # type: ignore[attr-defined]
    return enabled


def follow_faust_pauses(consumer: Any, wanted: Any, topics: Any) -> None:
    """Pause in the aiokafka ``consumer`` the assigned partitions of ``topics`` not in
    ``wanted`` (the partitions Faust will take records of), dropping their buffered records, and
    resume the paused ones Faust wants again. Runs in the consumer's own thread and event loop
    (aiokafka's pause makes a future there).

    Only ``topics`` (the tables' changelogs): Faust also leaves out an input partition for a
    moment when its stream's buffer is full; there aiokafka's buffered records must stay, to be
    handed over the moment Faust asks again instead of fetched a second time.
    """
    assigned = consumer.assignment()
    if not assigned:
        return
    paused = consumer.paused()
    stop = [tp for tp in assigned if tp.topic in topics and tp not in wanted and tp not in paused]
    go = [tp for tp in paused if tp in wanted]
    if stop:
        consumer.pause(*stop)
        buffered = consumer._fetcher._records  # records fetched, not yet handed out
        for tp in stop:
            buffered.pop(tp, None)
    if go:
        consumer.resume(*go)


async def fetch_following_pauses(
    self: Any, consumer: Any, active_partitions: Any, timeout: Any = None, max_records: Any = None
) -> Any:
    """Faust's ``AIOKafkaConsumerThread._fetch_records`` after :func:`follow_faust_pauses`
    for the app's changelog topics."""
    faust_consumer = self.consumer
    if _fetch_waits is not None:
        tune_fetcher(consumer._fetcher, *_fetch_waits)
    if active_partitions is not None and faust_consumer.flow_active and not consumer._closed:
        changelogs = faust_consumer.app.tables.changelog_topics
        follow_faust_pauses(consumer, active_partitions, changelogs)
    return await _original_fetch_records(
        self, consumer, active_partitions, timeout=timeout, max_records=max_records
    )


def tune_fetcher(fetcher: Any, wait_s: float, backoff_s: float) -> None:
    """Set aiokafka's (0.14.0) two fetch waits on a started consumer's ``fetcher`` (neither is
    a consumer argument that Faust passes on): the longest a fetch request waits on the broker
    for records (``fetch_max_wait_ms``; Faust fixes it at 1.5 s), and how long records that were
    fetched but not taken block further fetches from their broker (``prefetch_backoff``, 0.1 s).

    The ingest and users agents share one consumer. When one agent's records sit in the buffer
    (its stream is full), the other's partition is fetched alone only after the backoff, and
    that request then waits on the broker until the other agent's partition gets a record or the
    fetch wait ends, while the first agent's next records, already on the broker, wait behind
    it: the worker idled about a third of the time with a backlog (py-spy, ``vrec bench
    stream``). The ingest forwards only what it is fetched, so the two waits could stall each
    other for up to 1.5 s."""
    fetcher._fetch_max_wait_ms = int(wait_s * 1000)
    fetcher._prefetch_backoff = backoff_s


def apply_fetch_pause(
    enabled: bool = True, *, wait_s: float | None = None, backoff_s: float | None = None
) -> bool:
    """Install (or remove) the fetch-stall workaround; False where faust-streaming is not the
    pinned release. ``wait_s`` and ``backoff_s`` (both or neither): :func:`tune_fetcher`'s, set
    on every fetch call (None: aiokafka's and Faust's own)."""
    global _original_fetch_records, _fetch_waits
    _fetch_waits = None if wait_s is None or backoff_s is None else (wait_s, backoff_s)
    import faust
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if faust.__version__ != PINNED:
        return False
    if _original_fetch_records is None:
        _original_fetch_records = AIOKafkaConsumerThread._fetch_records
    AIOKafkaConsumerThread._fetch_records = (
        fetch_following_pauses if enabled else _original_fetch_records
    )
    return enabled
