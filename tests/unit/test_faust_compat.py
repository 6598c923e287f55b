"""streams.faust_compat: Faust's per-message ``wait_first`` without tasks when the handler does
not suspend, and Faust's own behaviour when it does (results, errors, interruption)."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from mode import Service
from mode.utils.locks import Event

from streams import faust_compat
from streams.faust_compat import fast_wait_first


class _Fetcher(Service):
    """What the patched method reads of Faust's Consumer: a service with ``suspend_flow``."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = Event()


@pytest.fixture(autouse=True)
def _installed():
    assert faust_compat.apply(True)
    yield


def _run(body):
    async def main():
        return await body(_Fetcher())

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a coroutine left unawaited fails
        return asyncio.run(main())


def test_a_handler_that_does_not_suspend_runs_without_a_task():
    seen = []

    async def handler(message):
        seen.append(message)
        return message * 2

    async def body(svc):
        before = len(asyncio.all_tasks())
        created = []
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()

        def factory_spy(lp, coro, **kw):
            created.append(coro)
            return asyncio.Task(coro, loop=lp, **kw)

        loop.set_task_factory(factory_spy)
        try:
            result = await fast_wait_first(svc, handler(21), svc.suspend_flow.wait())
        finally:
            loop.set_task_factory(factory)
        return result, created, before

    result, created, _ = _run(body)
    assert seen == [21] and result.results == [42] and not result.stopped
    assert created == []  # Faust's own method makes four tasks here (callback, suspend_flow,
    # stopped, crashed)


def test_a_handler_that_suspends_finishes_in_a_task_with_its_result():
    order = []

    async def handler(gate):
        order.append("start")
        value = await gate
        await asyncio.sleep(0)  # a bare yield too
        order.append("end")
        return value

    async def body(svc):
        gate = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, gate.set_result, "ok")
        return await fast_wait_first(svc, handler(gate), svc.suspend_flow.wait())

    result = _run(body)
    assert order == ["start", "end"] and result.results == ["ok"]


@pytest.mark.parametrize("suspend_first", [False, True])
def test_errors_reach_the_caller(suspend_first):
    async def handler():
        if suspend_first:
            await asyncio.sleep(0.001)
        raise ValueError("bad message")

    async def body(svc):
        return await fast_wait_first(svc, handler(), svc.suspend_flow.wait())

    with pytest.raises(ValueError, match="bad message"):
        _run(body)


def test_a_rebalance_interrupts_a_suspended_handler_as_in_faust():
    observed = []

    async def handler(gate):
        try:
            await gate
        except asyncio.CancelledError:
            observed.append("cancelled")
            raise

    async def body(svc):
        loop = asyncio.get_running_loop()
        gate = loop.create_future()  # never set: the handler waits for room on a full queue
        loop.call_later(0.01, svc.suspend_flow.set)
        result = await fast_wait_first(svc, handler(gate), svc.suspend_flow.wait())
        await asyncio.sleep(0)  # let the cancellation land
        return result

    result = _run(body)
    assert observed == ["cancelled"]
    assert result.results == [True] and not result.stopped  # suspend_flow.wait() won, as in Faust


def test_flags_already_set_take_faust_path(monkeypatch):
    calls = []
    original = faust_compat._original_wait_first

    async def spy(self, *coros, timeout=None):
        calls.append(len(coros))
        return await original(self, *coros, timeout=timeout)

    monkeypatch.setattr(faust_compat, "_original_wait_first", spy)

    async def handler():
        return 1

    async def body(svc):
        svc.suspend_flow.set()
        return await fast_wait_first(svc, handler(), svc.suspend_flow.wait())

    _run(body)
    assert calls == [2]


def test_disabled_restores_faust_method():
    from faust.transport.consumer import Consumer
    from mode.services import Service as ModeService

    faust_compat.apply(False)
    assert Consumer.wait_first is ModeService.wait_first
    faust_compat.apply(True)
    assert Consumer.wait_first is fast_wait_first


def test_recovery_wait_for_takes_a_waiting_record_without_a_task():
    import faust.tables.recovery as recovery

    from streams.faust_compat import fast_wait_for

    assert recovery.asyncio.wait_for is fast_wait_for
    assert recovery.asyncio.TimeoutError is asyncio.TimeoutError  # the rest is asyncio's

    async def body(_svc):
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait("record")
        created = []
        loop = asyncio.get_running_loop()

        def factory_spy(lp, coro, **kw):
            created.append(coro)
            return asyncio.Task(coro, loop=lp, **kw)

        loop.set_task_factory(factory_spy)
        got = await fast_wait_for(queue.get(), timeout=5.0)
        loop.call_later(0.01, queue.put_nowait, "later")
        later = await fast_wait_for(queue.get(), timeout=5.0)  # waits: a task, as before
        with pytest.raises(asyncio.TimeoutError):
            await fast_wait_for(queue.get(), timeout=0.01)  # the timeout still applies
        return got, later, len(created)

    got, later, n_tasks = _run(body)
    assert (got, later) == ("record", "later")
    assert n_tasks == 2  # only the two waits that suspended


def test_disabled_restores_recovery_asyncio():
    import faust.tables.recovery as recovery

    faust_compat.apply(False)
    assert recovery.asyncio is asyncio
    faust_compat.apply(True)
    assert recovery.asyncio is not asyncio
