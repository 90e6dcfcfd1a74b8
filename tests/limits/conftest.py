from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from quotagate.limits import InProcessStore, RedisStore, Store

from ..conftest import REDIS_URL

# 2023-11-14 22:13:20 UTC: an arbitrary, fixed start for injected clocks.
T0 = 1_700_000_000.0


@dataclass
class FakeClock:
    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


StoreFactory = Callable[[FakeClock], Store]


@pytest.fixture(params=["memory", "redis", "redis-split"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """The one table: every test using it runs on each store (and on Redis in per-slot mode)."""
    if request.param == "memory":
        return lambda clock: InProcessStore(clock)
    client = request.getfixturevalue("redis_client")
    split = request.param == "redis-split"
    return lambda clock: RedisStore(client, clock=clock, split_by_slot=split)
