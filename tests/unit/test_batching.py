"""take_batches (streams/agents/batching.py): Faust's micro-batches, grown while the worker is
behind. A Faust stream over an in-memory channel (no broker: the app's transport is never
started); the broker's backlog is the test's ``waiting`` function."""

from __future__ import annotations

import asyncio

import faust

from streams.agents.batching import take_batches
from streams.settings import Settings

N = 120


def _batches(backlog: int, waiting_records: int, *, send_gap_s: float = 0.005, n: int = N):
    """Send ``n`` values one every ``send_gap_s``; the batches take_batches yields (values)."""

    async def main() -> list[list[int]]:
        app = faust.App("test-batching", broker="kafka://127.0.0.1:9", store="memory://")
        app.flow_control.resume()
        channel = app.channel(maxsize=1000)
        stream = channel.stream()
        limits = Settings(
            batch_max=50, batch_within_s=0.01, batch_backlog=backlog, batch_backlog_within_s=1.0
        ).users

        def waiting(event: faust.EventT) -> int:
            return waiting_records

        async def send() -> None:
            for value in range(n):
                await channel.send(value=value)
                await asyncio.sleep(send_gap_s)

        sender = asyncio.create_task(send())
        out: list[list[int]] = []
        async with stream:
            async for batch in take_batches(stream, limits, waiting=waiting):
                out.append([ev.value for ev in batch])
                if sum(map(len, out)) >= n:
                    break
        await sender
        return out

    return asyncio.run(main())


def test_a_worker_that_keeps_up_gets_faust_batches():
    # 100 records still on the broker, below the threshold of 101: the 10 ms wait, ~2 records
    batches = _batches(backlog=101, waiting_records=100)
    assert [v for b in batches for v in b] == list(range(N))  # each once, in order
    assert max(map(len, batches)) < 50
    assert len(batches) > N / 10


def test_a_worker_behind_fills_its_batches():
    batches = _batches(backlog=100, waiting_records=100)
    assert [v for b in batches for v in b] == list(range(N))
    assert [len(b) for b in batches[:2]] == [50, 50]  # batch_max, not the 10 ms wait's ~2


def test_a_batch_behind_still_ends_at_the_backlog_wait():
    # the broker "always has more", but only 7 records ever come: yielded after at most 1 s
    async def timed() -> tuple[list[list[int]], float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        out = await asyncio.to_thread(_batches, 1, 10_000, n=7)
        return out, loop.time() - start

    batches, took = asyncio.run(timed())
    assert batches == [list(range(7))]
    assert 0.9 <= took < 5.0  # it waited for more (batch_backlog_within_s), then gave up


def test_backlog_zero_is_faust_take_events():
    batches = _batches(backlog=0, waiting_records=10_000)
    assert [v for b in batches for v in b] == list(range(N))
    assert max(map(len, batches)) < 50


def test_broker_backlog_counts_the_records_past_the_event():
    from types import SimpleNamespace

    from streams.agents.batching import broker_backlog

    class Consumer:
        def highwater(self, tp: str) -> int | None:
            return {"a": 10}.get(tp)  # the next offset to be written; unknown before a fetch

    waiting = broker_backlog(SimpleNamespace(consumer=Consumer()))
    at = lambda tp, offset: SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))  # noqa: E731
    assert waiting(at("a", 4)) == 5
    assert waiting(at("a", 9)) == 0
    assert waiting(at("b", 4)) is None
