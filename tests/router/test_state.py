"""The breaker and cooldown state machine, on the in-process store and on the real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from quotagate.config import BreakerSettings
from quotagate.limits import RedisConnection
from quotagate.redis import connect
from quotagate.router import DeploymentStates, MemoryStateStore, RedisStateStore, parse_duration
from quotagate.router._state import CLOSED, HALF_OPEN, OPEN, StateReply, StateStore

from ..conftest import REDIS_URL
from ..redis_servers import LocalCluster
from ..redis_servers import local_cluster as local_cluster


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore()
        return
    if request.param == "redis-cluster":
        cluster: LocalCluster = request.getfixturevalue("local_cluster")
        cluster.flushall()
        client = connect(cluster.url, timeout=5.0, connect_timeout=5.0)
        yield RedisStateStore(client)
        await client.aclose()
        return
    connection = RedisConnection(REDIS_URL)
    await connection.execute("FLUSHDB")
    yield RedisStateStore(connection)
    await connection.aclose()


async def test_breaker_transitions(store: StateStore) -> None:
    """closed -> open after N failures -> half-open after the cooldown -> closed or open again."""
    settings = BreakerSettings(failures=3, window_seconds=10, cooldown_seconds=0.2, probes=1)
    states = DeploymentStates(store, settings)
    for _ in range(2):
        await states.failure("m#0")
        assert states.cached("m#0").state == CLOSED
    await states.failure("m#0")
    assert states.cached("m#0").state == OPEN
    assert not await states.usable("m#0")
    await asyncio.sleep(0.25)
    assert await states.usable("m#0")  # the one probe
    assert states.cached("m#0").state == HALF_OPEN
    assert not await states.usable("m#0")  # probes are used up
    await states.failure("m#0")  # the probe failed
    assert states.cached("m#0").state == OPEN
    await asyncio.sleep(0.25)
    assert await states.usable("m#0")
    await states.success("m#0")  # the probe succeeded
    assert states.cached("m#0").state == CLOSED
    assert await states.usable("m#0")


async def test_failures_outside_the_window_do_not_add_up(store: StateStore) -> None:
    """Failures count within the window only."""
    states = DeploymentStates(store, BreakerSettings(failures=2, window_seconds=0.1, cooldown_seconds=5))
    await states.failure("m#1")
    await asyncio.sleep(0.15)
    await states.failure("m#1")
    assert states.cached("m#1").state == CLOSED


async def test_cooldowns_are_never_shortened(store: StateStore) -> None:
    """A later, shorter cooldown does not cut an earlier, longer one."""
    states = DeploymentStates(store, BreakerSettings())
    await states.cooldown("m#2", 5.0)
    await states.cooldown("m#2", 1.0)
    assert states.cached("m#2").cooldown_until - time.monotonic() > 4.5
    assert not await states.usable("m#2")


async def test_state_is_shared_between_nodes() -> None:
    """Two nodes on one Redis see each other's breaker (after their view expires)."""
    nodes = [RedisConnection(REDIS_URL), RedisConnection(REDIS_URL)]
    await nodes[0].execute("FLUSHDB")
    settings = BreakerSettings(failures=1, cooldown_seconds=5)
    first, second = (DeploymentStates(RedisStateStore(node), settings) for node in nodes)
    assert await second.usable("m#3")
    await first.failure("m#3")
    await asyncio.sleep(0.3)  # past the view's lifetime
    assert not await second.usable("m#3")
    for node in nodes:
        await node.aclose()


class CountingStore(MemoryStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def call(self, deployment: str, op: str, *args: float) -> StateReply:
        self.calls += 1
        await asyncio.sleep(0.01)  # a round trip
        return await super().call(deployment, op, *args)


async def test_requests_in_flight_share_one_refresh_of_a_stale_view() -> None:
    """When a deployment's view expires under load, one call to the store refreshes it for all."""
    store = CountingStore()
    states = DeploymentStates(store, BreakerSettings())
    assert all(await asyncio.gather(*(states.usable("m#4") for _ in range(64))))
    assert store.calls == 1
    await asyncio.sleep(0.3)  # stale again
    waiters = [asyncio.ensure_future(states.usable("m#4")) for _ in range(64)]
    await asyncio.sleep(0)
    waiters[0].cancel()  # one client leaving does not cancel the refresh the others wait on
    results = await asyncio.gather(*waiters[1:])
    assert all(results) and store.calls == 2


def test_parse_go_durations() -> None:
    """Provider reset headers come as Go durations or seconds."""
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("1s") == 1.0
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("2.5") == 2.5
    assert parse_duration("soon") is None
