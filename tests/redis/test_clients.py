"""``quotagate.redis``: the client chosen by the URL, and the same replies and errors from each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from quotagate.redis import LuaScript, RedisClient, RedisConnection, RedisReplyError, connect, describe_url
from quotagate.redis._redispy import RedisPyClient

from ..conftest import REDIS_URL, closed_port


def test_the_url_chooses_the_client() -> None:
    assert isinstance(connect(REDIS_URL, timeout=1, connect_timeout=1), RedisConnection)
    assert isinstance(connect(REDIS_URL + "?client=redis-py", timeout=1, connect_timeout=1), RedisPyClient)
    cluster = connect("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", timeout=1, connect_timeout=1)
    assert isinstance(cluster, RedisPyClient) and cluster.cluster
    sentinel = connect("redis+sentinel://127.0.0.1:26379/mymaster/2", timeout=1, connect_timeout=1)
    assert isinstance(sentinel, RedisPyClient) and not sentinel.cluster


def test_a_bad_url_is_refused_with_what_to_write() -> None:
    with pytest.raises(ValueError, match=r"redis\+cluster://"):
        connect("http://127.0.0.1:6379", timeout=1, connect_timeout=1)
    with pytest.raises(ValueError, match="name the Sentinel service"):
        connect("redis+sentinel://127.0.0.1:26379", timeout=1, connect_timeout=1)


def test_passwords_stay_out_of_descriptions() -> None:
    assert describe_url("redis://:s3cret@h:6379/0") == "redis://***@h:6379/0"
    assert describe_url("redis+cluster://app:s3cret@a:1,b:2") == "redis+cluster://app:***@a:1,b:2"
    assert describe_url("redis://h:6379/0") == "redis://h:6379/0"
    client = connect("redis+cluster://app:s3cret@127.0.0.1:7000", timeout=1, connect_timeout=1)
    assert isinstance(client, RedisPyClient) and "s3cret" not in client.describe


@pytest.fixture(params=["pipelined", "redis-py"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[RedisClient]:
    flush = Redis.from_url(REDIS_URL)
    await flush.flushdb()
    url = REDIS_URL if request.param == "pipelined" else REDIS_URL + "?client=redis-py"
    chosen = connect(url, timeout=2.0, connect_timeout=2.0)
    yield chosen
    await chosen.aclose()
    await flush.flushdb()
    await flush.aclose()


async def test_replies_are_as_redis_sent_them(client: RedisClient) -> None:
    """The ledger reads stream entries the same way whichever client fetched them."""
    assert await client.execute("SET", "qg:test:a", "1", "NX", "EX", 10) == b"OK"
    assert await client.execute("SET", "qg:test:a", "1", "NX", "EX", 10) is None
    assert await client.execute("XGROUP", "CREATE", "qg:test:s", "g", "0", "MKSTREAM") == b"OK"
    entry = await client.execute("XADD", "qg:test:s", "*", "b", "[1]", "n", 1)
    reply = await client.execute("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", "qg:test:s", ">")
    assert reply == [[b"qg:test:s", [[entry, [b"b", b"[1]", b"n", b"1"]]]]]
    claimed = await client.execute("XAUTOCLAIM", "qg:test:s", "g", "c2", 0, "0-0", "COUNT", 10)
    assert claimed[1] == [[entry, [b"b", b"[1]", b"n", b"1"]]]
    assert await client.execute("XACK", "qg:test:s", "g", entry) == 1


async def test_an_error_reply_raises_redis_reply_error(client: RedisClient) -> None:
    await client.execute("SET", "qg:test:text", "not a number")
    with pytest.raises(RedisReplyError, match="not an integer"):
        await client.execute("INCR", "qg:test:text")
    await client.execute("XGROUP", "CREATE", "qg:test:s", "g", "0", "MKSTREAM")
    with pytest.raises(RedisReplyError, match="BUSYGROUP"):
        await client.execute("XGROUP", "CREATE", "qg:test:s", "g", "0", "MKSTREAM")


async def test_a_script_redis_forgot_is_loaded_and_runs_once(client: RedisClient) -> None:
    script = LuaScript("return redis.call('INCR', KEYS[1])")
    assert await client.evalsha(script, ["qg:test:n"], []) == 1
    await client.execute("SCRIPT", "FLUSH")
    assert await client.evalsha(script, ["qg:test:n"], []) == 2


@pytest.mark.parametrize("suffix", ["", "?client=redis-py"])
async def test_nothing_listening_is_a_connection_error(suffix: str) -> None:
    client = connect(f"redis://127.0.0.1:{closed_port()}/0{suffix}", timeout=1.0, connect_timeout=1.0)
    with pytest.raises(ConnectionError):
        await client.execute("PING")
    with pytest.raises(ConnectionError):
        await client.check()
    await client.aclose()


async def test_the_check_passes_on_a_standalone_redis(client: RedisClient) -> None:
    await client.check()
