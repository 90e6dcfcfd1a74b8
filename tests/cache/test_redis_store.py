"""The shared cache store in Redis: on one server (quotagate's pipelined connection and redis-py) and
on a real 6-node Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from redis.crc import key_slot

from quotagate.cache._redis_store import RedisCacheStore
from quotagate.redis import RedisClient, connect

from ..conftest import closed_port
from ..redis_servers import LocalCluster
from ..redis_servers import local_cluster as local_cluster

REDIS_URL = "redis://127.0.0.1:6379/0"

# User names that would break a hash tag or a SCAN pattern if they went into keys as they are,
# and namespaces that are prefixes of one another.
AWKWARD_NAMESPACES = ["u:a", "u:a:b", "u:*", "u:{x}", "u:}{", "u:a:*:b", "u:[ab]", "u:\\", "u:", "g"]

StoreFactory = Callable[[], RedisCacheStore]


def digest(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture(params=["pipelined", "redis-py", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[RedisClient]:
    """The gateway's client for one server (its own connection, or redis-py), or for a Cluster."""
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("local_cluster")
        url = cluster.url
    else:
        url = REDIS_URL if request.param == "pipelined" else REDIS_URL + "?client=redis-py"
    redis = connect(url, timeout=5.0, connect_timeout=5.0)
    yield redis
    await redis.aclose()


@pytest.fixture
async def new_store(client: RedisClient) -> AsyncIterator[StoreFactory]:
    """Stores under prefixes of their own, removed afterwards (the server is shared with others)."""
    made: list[RedisCacheStore] = []

    def make() -> RedisCacheStore:
        store = RedisCacheStore(client, prefix=f"test:{uuid.uuid4().hex}:")
        made.append(store)
        return store

    yield make
    for store in made:
        await store.purge()
        await client.execute("DEL", store.namespaces_key)


@pytest.fixture
def store(new_store: StoreFactory) -> RedisCacheStore:
    return new_store()


async def test_an_answer_put_is_got_back(store: RedisCacheStore) -> None:
    """``put`` then ``get`` returns the bytes; an unknown key, or another namespace's, is a miss."""
    await store.put(f"u:alice:{digest(1)}", b'{"answer": 42}', 60)
    assert await store.get(f"u:alice:{digest(1)}") == b'{"answer": 42}'
    assert await store.get(f"u:alice:{digest(2)}") is None
    assert await store.get(f"u:bob:{digest(1)}") is None
    await store.put(f"u:alice:{digest(1)}", b"newer", 60)
    assert await store.get(f"u:alice:{digest(1)}") == b"newer"


async def test_an_entry_expires_after_its_ttl(store: RedisCacheStore) -> None:
    """An entry lives for its TTL (Redis's PX); a TTL of zero or less stores nothing."""
    await store.put(f"g:{digest(1)}", b"short", 0.3)
    await store.put(f"g:{digest(2)}", b"never", 0)
    await store.put(f"g:{digest(3)}", b"never", -1)
    assert await store.get(f"g:{digest(1)}") == b"short"
    assert await store.get(f"g:{digest(2)}") is None
    assert await store.get(f"g:{digest(3)}") is None
    await asyncio.sleep(0.5)
    assert await store.get(f"g:{digest(1)}") is None


async def test_one_namespace_shares_one_slot(store: RedisCacheStore) -> None:
    """Every entry of a namespace, whatever its name holds, is in one Cluster slot; the tag hides the name."""
    for namespace in AWKWARD_NAMESPACES:
        keys = [store.redis_key(f"{namespace}:{digest(n)}") for n in range(5)]
        assert len({key_slot(key.encode()) for key in keys}) == 1
        assert all(key.count("{") == 1 and key.count("}") == 1 for key in keys)


async def test_purging_a_namespace_leaves_the_others(store: RedisCacheStore) -> None:
    """A purge drops its namespace's entries alone, even where names are prefixes of one another or
    hold glob and hash-tag characters."""
    for namespace in AWKWARD_NAMESPACES:
        for n in range(3):
            await store.put(f"{namespace}:{digest(n)}", namespace.encode(), 60)
    assert await store.purge("u:a") == 3
    assert await store.purge("u:*") == 3
    assert await store.purge("u:{x}") == 3
    assert await store.purge("u:nobody") == 0
    purged = {"u:a", "u:*", "u:{x}"}
    for namespace in AWKWARD_NAMESPACES:
        for n in range(3):
            value = await store.get(f"{namespace}:{digest(n)}")
            assert value == (None if namespace in purged else namespace.encode()), namespace
    assert await store.stats() == {"entries": 3 * (len(AWKWARD_NAMESPACES) - 3), "namespaces": 7}


async def test_purging_everything_leaves_other_stores(new_store: StoreFactory) -> None:
    """A purge of everything drops every namespace's entries, and none of a store under another prefix."""
    store, neighbour = new_store(), new_store()
    for namespace in AWKWARD_NAMESPACES:
        for n in range(4):
            await store.put(f"{namespace}:{digest(n)}", b"mine", 60)
    await neighbour.put(f"u:a:{digest(0)}", b"theirs", 60)
    assert await store.purge() == 4 * len(AWKWARD_NAMESPACES)
    assert await store.get(f"u:a:{digest(0)}") is None
    assert await store.stats() == {"entries": 0, "namespaces": 0}
    assert await neighbour.get(f"u:a:{digest(0)}") == b"theirs"
    assert await store.purge() == 0


async def test_a_purge_spans_many_scan_steps(store: RedisCacheStore) -> None:
    """A namespace larger than one scan step is purged whole, and counted by the stats."""
    for start in range(0, 2500, 100):  # a hundred at a time: redis-py's pool has its bounds
        await asyncio.gather(*(store.put(f"k:big:{digest(n)}", b"x", 60) for n in range(start, start + 100)))
    await store.put(f"k:small:{digest(0)}", b"x", 60)
    assert await store.stats() == {"entries": 2501, "namespaces": 2}
    assert await store.purge("k:big") == 2500
    assert await store.stats() == {"entries": 1, "namespaces": 1}


async def test_stats_count_entries_and_namespaces(store: RedisCacheStore) -> None:
    """``stats`` counts the live entries and the namespaces that hold some; expired ones drop out."""
    assert await store.stats() == {"entries": 0, "namespaces": 0}
    await store.put(f"u:a:{digest(0)}", b"x", 60)
    await store.put(f"u:a:{digest(1)}", b"x", 60)
    await store.put(f"u:a:b:{digest(0)}", b"x", 60)
    await store.put(f"t:gold:{digest(0)}", b"x", 0.2)
    assert await store.stats() == {"entries": 4, "namespaces": 3}
    await asyncio.sleep(0.4)
    assert await store.stats() == {"entries": 3, "namespaces": 2}


@pytest.mark.parametrize("client", ["pipelined"], indirect=True)
async def test_an_unreachable_redis_raises_the_redis_errors(client: RedisClient) -> None:
    """Every call raises ConnectionError (or TimeoutError) when Redis is not there: the cache stage
    counts that as a miss."""
    store = RedisCacheStore(connect(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.5, connect_timeout=0.5))
    with pytest.raises((ConnectionError, TimeoutError)):
        await store.get(f"g:{digest(0)}")
    with pytest.raises((ConnectionError, TimeoutError)):
        await store.put(f"g:{digest(0)}", b"x", 60)
    with pytest.raises((ConnectionError, TimeoutError)):
        await store.purge("g")
    with pytest.raises((ConnectionError, TimeoutError)):
        await store.stats()
