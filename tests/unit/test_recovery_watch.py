"""streams.recovery.stalled_partitions: the recovery watchdog's stall rule."""

from faust.types import TP

from streams.recovery import reseek_offsets, stalled_partitions, streams_with_backlog

A, B = TP("trending-changelog", 0), TP("users-changelog", 0)


def test_a_partition_that_stops_moving_is_reported_after_the_delay() -> None:
    progress: dict = {}
    remaining = {A: 926, B: 10}
    assert stalled_partitions(remaining, {A: -1, B: 5}, progress, 0.0, 20.0) == []
    # B moves on, A does not
    assert stalled_partitions(remaining, {A: -1, B: 9}, progress, 15.0, 20.0) == []
    assert stalled_partitions(remaining, {A: -1, B: 12}, progress, 25.0, 20.0) == [A]
    # B's clock restarted when it moved at 25 s: not stalled 19 s later, stalled 20 s later
    assert stalled_partitions(remaining, {A: -1, B: 12}, progress, 44.0, 20.0) == [A]
    assert stalled_partitions(remaining, {A: -1, B: 12}, progress, 45.0, 20.0) == [A, B]


def test_done_partitions_are_never_stalled_and_are_forgotten() -> None:
    progress: dict = {}
    assert stalled_partitions({A: 3}, {A: 7}, progress, 0.0, 1.0) == []
    assert stalled_partitions({A: 0}, {A: 10}, progress, 50.0, 1.0) == []
    assert progress == {}
    # records arrive again later (a new recovery): the clock starts afresh
    assert stalled_partitions({A: 5}, {A: 10}, progress, 60.0, 1.0) == []
    assert stalled_partitions({A: 5}, {A: 10}, progress, 61.0, 1.0) == [A]


def test_streams_with_backlog_needs_two_records_left() -> None:
    v0, v1, p0 = TP("views", 0), TP("views", 1), TP("purchases", 0)
    highwaters = {v0: 600, v1: 11, p0: None}
    # v0 never read (no committed offset): 600 waiting; v1 read up to 9 or 10
    assert streams_with_backlog(highwaters, {v0: None, v1: 9}) == [v0]
    assert streams_with_backlog(highwaters, {v0: 597, v1: 8}) == [v0, v1]
    assert streams_with_backlog(highwaters, {v0: 598, v1: 10}) == []


def test_a_stalled_stream_is_sought_back_to_what_faust_has_read() -> None:
    p, v, u = TP("purchases", 0), TP("views", 0), TP("user-events", 0)
    # the stall seen on 2026-12-01: nothing read, nothing committed, aiokafka at the end
    assert reseek_offsets([p, v, u], {}, {}, {p: 0, v: 0, u: 0}) == {p: 0, v: 0, u: 0}
    # a read offset wins over a commit; a commit over the beginning; a truncated log's start
    got = reseek_offsets([p, v, u], {p: 40, v: None}, {p: 30, v: 25, u: None}, {u: 7})
    assert got == {p: 40, v: 25, u: 7}


def test_dropped_tails_are_read_uncommitted_and_idle() -> None:
    from streams.recovery import dropped_tails

    v0, p0, u0 = TP("views", 0), TP("purchases", 0), TP("user-events", 0)
    highwaters = {v0: 600, p0: 1401, u0: 2000}
    read = {v0: 599, p0: 1400, u0: 1999}
    committed = {v0: 600, p0: 1400, u0: 2000}
    # the clock mark at 1400 was read, never delivered, never committed: re-fetch it
    assert dropped_tails(highwaters, read, committed, busy=set()) == [p0]
    # still in the agent's hands (unacked): not dropped
    assert dropped_tails(highwaters, read, committed, busy={p0}) == []
    # committed up to the high-water mark, or never read / never committed: nothing to do
    assert dropped_tails(highwaters, read, {**committed, p0: 1401}, busy=set()) == []
    assert dropped_tails(highwaters, {**read, p0: None}, committed, busy=set()) == []
    assert dropped_tails(highwaters, read, {**committed, p0: None}, busy=set()) == []
    # where to fetch it from again: the read offset (the record is delivered again)
    from streams.recovery import reseek_offsets

    assert reseek_offsets([p0], read, committed, {p0: 0}) == {p0: 1400}


def _chain_while_waiting(waiter) -> list[str]:
    """The names in :func:`await_chain` of a task running ``waiter(gate)`` while it waits on
    the gate (then the gate opens and the task ends)."""
    import asyncio

    from streams.recovery import await_chain

    async def main() -> str:
        gate = asyncio.Event()
        task = asyncio.ensure_future(waiter(gate))
        await asyncio.sleep(0)
        chain = await_chain(task)
        gate.set()
        await task
        return chain

    return [part.split(":")[0] for part in asyncio.run(main()).split(" > ")]


def test_await_chain_names_where_a_task_waits() -> None:
    async def inner(gate) -> None:
        await gate.wait()

    async def outer(gate) -> None:
        await inner(gate)

    names = _chain_while_waiting(outer)
    assert names[:3] == [
        "test_await_chain_names_where_a_task_waits.<locals>.outer",
        "test_await_chain_names_where_a_task_waits.<locals>.inner",
        "Event.wait",
    ]
    assert names[-1].startswith("Future")  # the future it waits on (FutureIter in C)


def test_fetcher_state_sees_a_fetcher_whose_drain_task_ended() -> None:
    import asyncio
    from types import SimpleNamespace

    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from streams.recovery import fetcher_state

    async def main() -> tuple[dict, dict]:
        def event(on: bool) -> asyncio.Event:
            e = asyncio.Event()
            if on:
                e.set()
            return e

        flow = FlowControlEvent(initially_suspended=False)
        queue = FlowControlQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
        queue.put_nowait(1)
        running = asyncio.ensure_future(asyncio.sleep(10))
        done = asyncio.ensure_future(asyncio.sleep(0))
        await asyncio.sleep(0.01)

        def app(fut: asyncio.Future) -> SimpleNamespace:
            fetcher = SimpleNamespace(
                _futures={fut}, _started=event(True), _stopped=event(False), _crashed=event(False)
            )
            return SimpleNamespace(_fetcher=fetcher, rebalancing=False, flow_control=flow)

        alive, dead = fetcher_state(app(running)), fetcher_state(app(done))
        running.cancel()
        return alive, dead

    alive, dead = asyncio.run(main())
    assert alive["draining"] and not dead["draining"]
    assert alive["queued"] == [1] and alive["flow_control_active"]


def test_await_chain_follows_async_for_into_the_generator() -> None:
    async def records(gate):
        await gate.wait()
        yield 1

    async def drain(gate) -> None:
        async for _ in records(gate):
            pass

    names = [name.rsplit(".", 1)[-1] for name in _chain_while_waiting(drain)]
    assert names[:3] == ["drain", "records", "wait"]


def test_stall_action_escalates_from_seek_to_fetcher_restart_to_exit() -> None:
    from streams.recovery import stall_action

    def act(futile: int, idle: bool = True, draining: bool = True) -> str:
        return stall_action(futile, idle=idle, draining=draining, give_up_after=3)

    assert [act(n) for n in range(1, 6)] == ["seek", "restart", "restart", "exit", "exit"]
    # an agent holding a message is working (a long day close), not stalled: seeks only
    assert [act(n, idle=False) for n in (1, 2, 9)] == ["seek", "seek", "seek"]
    # a fetcher whose drain task ended is restarted at once
    assert act(1, draining=False) == "restart"
    assert act(9, idle=False, draining=False) == "restart"
