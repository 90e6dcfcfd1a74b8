from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from quotagate.limits import InProcessStore, RedisConnection, RedisStore, Store
from quotagate.redis import RedisClient, connect

from ..conftest import REDIS_URL, closed_port
from ..redis_servers import LocalCluster
from ..redis_servers import local_cluster as local_cluster

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


@pytest.fixture
async def cluster_client(local_cluster: LocalCluster) -> AsyncIterator[RedisClient]:
    """The gateway's client for a Redis Cluster, on a flushed 6-node cluster of the module's own."""
    local_cluster.flushall()
    client = connect(local_cluster.url, timeout=5.0, connect_timeout=5.0)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_connection(redis_client: Redis) -> AsyncIterator[RedisConnection]:
    """The gateway's pipelined connection, on the same (flushed) test database."""
    connection = RedisConnection(REDIS_URL)
    yield connection
    await connection.aclose()


@pytest.fixture(params=["memory", "redis", "redis-pipelined", "redis-split", "redis-cluster"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """The one table: every test using it runs on each store: in-process, Redis through
    redis-py and through the gateway's pipelined connection, Redis in per-slot mode, and a real
    6-node Redis Cluster through the client ``redis+cluster://`` gives the gateway."""
    if request.param == "memory":
        return lambda clock: InProcessStore(clock)
    if request.param == "redis-cluster":
        client = request.getfixturevalue("cluster_client")
        return lambda clock: RedisStore(client, clock=clock)
    if request.param == "redis-pipelined":
        connection = request.getfixturevalue("redis_connection")
        return lambda clock: RedisStore(connection, clock=clock)
    client = request.getfixturevalue("redis_client")
    split = request.param == "redis-split"
    return lambda clock: RedisStore(client, clock=clock, split_by_slot=split)


def start_redis(port: int, *extra: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is needed (Debian package redis-server)")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL)


@pytest.fixture
async def own_redis() -> AsyncIterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A Redis server of this test's own, so that it can be killed and restarted."""
    port = closed_port()
    procs = [start_redis(port)]
    yield port, procs
    for proc in procs:
        proc.kill()
        proc.wait()


async def wait_for_redis(port: int, password: str | None = None) -> None:
    client = Redis(port=port, password=password)
    for _ in range(100):
        try:
            await client.ping()
            break
        except Exception:
            await asyncio.sleep(0.05)
    await client.aclose()
