"""The limiter around a store: waiting in line, and what happens when the store fails."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from quotagate.limits import (
    Algorithm,
    Decision,
    InProcessStore,
    Limit,
    Limiter,
    LimitStatus,
    RedisStore,
    StoreUnavailableError,
    Unit,
)

from .conftest import FakeClock, start_redis, wait_for_redis

ONE_PER_SECOND = Limit("{k:a}:rps", Unit.REQUESTS, 1, Algorithm.GCRA, 1.0)


def fake_sleep(clock: FakeClock):  # type: ignore[no-untyped-def]
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    return sleep


class BrokenStore(InProcessStore):
    """A store whose every call fails (or hangs) while ``broken`` is set."""

    def __init__(self, clock: FakeClock, hang: bool = False) -> None:
        super().__init__(clock)
        self.broken = True
        self.hang = hang

    async def acquire(self, limits: Sequence[Limit], costs: Sequence[int], lease: str | None = None) -> Decision:
        if self.broken:
            if self.hang:
                await asyncio.Event().wait()
            raise ConnectionError("store down")
        return await super().acquire(limits, costs, lease)

    async def status(self, limits: Sequence[Limit]) -> tuple[LimitStatus, ...]:
        if self.broken:
            raise ConnectionError("store down")
        return await super().status(limits)


async def test_waiters_are_served_in_arrival_order(clock: FakeClock) -> None:
    """Denied requests that may wait are admitted as capacity returns, first come first served."""
    limiter = Limiter(InProcessStore(clock), clock=clock, sleep=fake_sleep(clock))
    order: list[int] = []

    async def request(index: int) -> None:
        decision = await limiter.acquire([ONE_PER_SECOND], [1], max_wait=10)
        assert decision.allowed
        order.append(index)

    tasks = []
    for index in range(5):
        tasks.append(asyncio.ensure_future(request(index)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert limiter.stats.waited == 4


class SteppedTime:
    """Sleeps that end only when the test moves the clock forward."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.clock.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for wake_at, future in list(self.sleepers):
            if wake_at <= self.clock.now + 1e-9 and not future.done():
                future.set_result(None)
        for _ in range(20):
            await asyncio.sleep(0)


async def test_higher_priority_waiters_go_first(clock: FakeClock) -> None:
    """A request of a higher tier that starts waiting overtakes the lower tiers already in line."""
    time_ = SteppedTime(clock)
    limiter = Limiter(InProcessStore(clock), clock=clock, sleep=time_.sleep)
    assert (await limiter.acquire([ONE_PER_SECOND], [1])).allowed
    order: list[str] = []

    async def request(name: str, priority: int) -> None:
        assert (await limiter.acquire([ONE_PER_SECOND], [1], max_wait=10, priority=priority)).allowed
        order.append(name)

    tasks = [asyncio.ensure_future(request("low-1", 0)), asyncio.ensure_future(request("low-2", 0))]
    await time_.advance(0)
    tasks.append(asyncio.ensure_future(request("high", 5)))
    await time_.advance(0)
    for _ in range(5):
        await time_.advance(1.0)
    await asyncio.gather(*tasks)
    assert order == ["high", "low-1", "low-2"]


async def test_waiting_is_bounded(clock: FakeClock) -> None:
    """Past max_wait, or with the queue full, the request is refused as without shaping."""
    time_ = SteppedTime(clock)
    limiter = Limiter(InProcessStore(clock), clock=clock, sleep=time_.sleep, max_queue=1)
    assert (await limiter.acquire([ONE_PER_SECOND], [1])).allowed
    assert not (await limiter.acquire([ONE_PER_SECOND], [1], max_wait=0.5)).allowed  # needs 1 s
    first = asyncio.ensure_future(limiter.acquire([ONE_PER_SECOND], [1], max_wait=5))
    await time_.advance(0)
    refused = await limiter.acquire([ONE_PER_SECOND], [1], max_wait=5)  # the queue holds one
    assert not refused.allowed and limiter.stats.queue_full == 1
    await time_.advance(1.0)
    assert (await first).allowed


async def test_a_request_queued_without_a_decision_that_reaches_the_head_at_its_deadline(clock: FakeClock) -> None:
    """One that joined the line behind another (no decision of its own yet) and becomes its head
    just as its wait runs out gets a refusal that says which limit and when: the 429's data, not
    an error (issue 19: an assert here was a 500 for the client)."""
    time_ = SteppedTime(clock)
    limiter = Limiter(InProcessStore(clock), clock=clock, sleep=time_.sleep)
    assert (await limiter.acquire([ONE_PER_SECOND], [1])).allowed
    first = asyncio.ensure_future(limiter.acquire([ONE_PER_SECOND], [1], max_wait=5))
    await time_.advance(0)
    behind = asyncio.ensure_future(limiter.acquire([ONE_PER_SECOND], [1], max_wait=1.0))
    await time_.advance(0)
    await time_.advance(1.0)  # the first is admitted as the second's wait runs out
    assert (await first).allowed
    decision = await behind
    assert not decision.allowed
    assert decision.denied_by is not None and decision.denied_by.limit is ONE_PER_SECOND
    assert 0 < decision.retry_after <= 1.0


async def test_fail_closed(clock: FakeClock) -> None:
    """With fail-closed, a broken store refuses with StoreUnavailableError, and recovers by itself."""
    store = BrokenStore(clock)
    limiter = Limiter(store, clock=clock, on_store_failure="closed", retry_interval=1.0, failures_to_trip=2)
    for _ in range(2):
        with pytest.raises(StoreUnavailableError):
            await limiter.acquire([ONE_PER_SECOND], [1])
    store.broken = False
    with pytest.raises(StoreUnavailableError):  # still resting the store
        await limiter.acquire([ONE_PER_SECOND], [1])
    clock.advance(1.0)
    assert (await limiter.acquire([ONE_PER_SECOND], [1])).allowed
    assert limiter.stats.store_errors == 2


async def test_fail_open_uses_this_nodes_share(clock: FakeClock) -> None:
    """With fail-open, a broken store's limits are enforced locally at this node's share."""
    store = BrokenStore(clock)
    limiter = Limiter(store, clock=clock, on_store_failure="open", fallback_share=0.25)
    hundred = Limit("{k:a}:rph", Unit.REQUESTS, 100, Algorithm.SLIDING_WINDOW, 3600.0)
    admitted = [(await limiter.acquire([hundred], [1])) for _ in range(30)]
    assert sum(d.allowed for d in admitted) == 25
    assert all(d.fallback for d in admitted)


async def test_a_store_outage_logs_a_line_now_and_then_not_one_per_request(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """While the store is down, the limiter's warnings (trips, settlements) come at most once per
    interval each, and the next one counts those held back, however many requests fail."""
    store = BrokenStore(clock)
    limiter = Limiter(store, clock=clock, on_store_failure="closed", retry_interval=0.1, failures_to_trip=1)
    store.broken = False
    admitted = await limiter.acquire([ONE_PER_SECOND], [1])
    store.broken = True
    caplog.set_level(logging.WARNING, logger="quotagate.limits")
    for _ in range(200):  # 5 s of requests, 40 a second
        with pytest.raises(StoreUnavailableError):
            await limiter.acquire([ONE_PER_SECOND], [1])
        await limiter.settle(admitted, [ONE_PER_SECOND], [1])
        clock.advance(0.025)
    assert [r.getMessage()[:30] for r in caplog.records] == [
        "limit store failed 1 times in ",
        "could not settle 1 limits: the",
    ]
    caplog.clear()
    clock.advance(10.0)
    with pytest.raises(StoreUnavailableError):
        await limiter.acquire([ONE_PER_SECOND], [1])
    [line] = caplog.records
    assert line.getMessage().endswith("(and 49 more like it since the last one)")


async def test_a_hanging_store_never_hangs_the_request(clock: FakeClock) -> None:
    """A store that does not answer is given up on after the timeout."""
    limiter = Limiter(BrokenStore(clock, hang=True), clock=clock, timeout=0.05)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        await limiter.acquire([ONE_PER_SECOND], [1])
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("client_kind", ["redis-py", "pipelined"])
async def test_real_redis_killed_and_restarted(
    own_redis: tuple[int, list[subprocess.Popen[bytes]]], client_kind: str
) -> None:
    """Redis dies mid-run: fail-open keeps deciding locally; when it is back, decisions use it again."""
    port, procs = own_redis
    await wait_for_redis(port)
    if client_kind == "redis-py":
        store = RedisStore(Redis(port=port, socket_timeout=0.2, socket_connect_timeout=0.2))
    else:
        store = RedisStore.from_url(f"redis://127.0.0.1:{port}", timeout=0.3)
    limiter = Limiter(store, on_store_failure="open", fallback_share=0.5, retry_interval=0.2, timeout=0.3)
    limit = Limit("{k:a}:rpm", Unit.REQUESTS, 10, Algorithm.SLIDING_WINDOW, 60.0)
    assert not (await limiter.acquire([limit], [1])).fallback

    procs[0].kill()
    procs[0].wait()
    during = await limiter.acquire([limit], [1])
    assert during.allowed and during.fallback
    assert limiter.stats.store_errors >= 1

    procs.append(start_redis(port))
    await wait_for_redis(port)
    await asyncio.sleep(0.25)  # past retry_interval
    after = None
    for _ in range(20):
        after = await limiter.acquire([limit], [1])
        if not after.fallback:
            break
        await asyncio.sleep(0.1)
    assert after is not None and not after.fallback  # back on the (fresh, script-less) Redis
    await store.aclose()
