"""The pipelined Redis connection of the request path: replies matched to callers, failures contained."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import hiredis
import pytest
from redis.asyncio import Redis

from quotagate.redis import LuaScript, RedisConnection, RedisReplyError

from ..conftest import REDIS_URL, closed_port
from ..limits.conftest import own_redis as own_redis
from ..limits.conftest import redis_client as redis_client
from ..limits.conftest import redis_connection as redis_connection
from ..limits.conftest import start_redis, wait_for_redis


async def test_concurrent_callers_each_get_their_own_reply(redis_connection: RedisConnection) -> None:
    """Hundreds of commands in flight at once: every caller gets the reply to its own command."""

    async def echo(index: int) -> bytes:
        return await redis_connection.execute("ECHO", f"caller-{index}")  # type: ignore[no-any-return]

    replies = await asyncio.gather(*(echo(i) for i in range(500)))
    assert replies == [f"caller-{i}".encode() for i in range(500)]


async def test_the_database_in_the_url_is_selected(redis_client: Redis) -> None:
    """redis://host:port/N works on database N, like redis-py's from_url."""
    database = int(REDIS_URL.rsplit("/", 1)[1])
    connection = RedisConnection(REDIS_URL)
    await connection.execute("SET", "qg:test:db", "here")
    assert await redis_client.get("qg:test:db") == b"here"
    other = Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + f"/{(database + 1) % 16}")
    assert await other.get("qg:test:db") is None
    await other.aclose()
    await connection.aclose()


async def test_an_error_reply_raises_and_the_connection_goes_on(redis_connection: RedisConnection) -> None:
    """Redis's error replies raise RedisReplyError for that caller only."""
    await redis_connection.execute("SET", "qg:test:text", "not a number")
    with pytest.raises(RedisReplyError, match="not an integer"):
        await redis_connection.execute("INCR", "qg:test:text")
    assert await redis_connection.execute("PING") == b"PONG"


@pytest.fixture
async def redis_with_password() -> tuple[int, subprocess.Popen[bytes]]:  # type: ignore[misc]
    port = closed_port()
    proc = start_redis(port, "--requirepass", "s3cret")
    await wait_for_redis(port, password="s3cret")
    yield port, proc
    proc.kill()
    proc.wait()


async def test_password_in_the_url(redis_with_password: tuple[int, subprocess.Popen[bytes]]) -> None:
    """redis://:password@host authenticates on connect; a wrong password is refused with Redis's error."""
    port, _ = redis_with_password
    connection = RedisConnection(f"redis://:s3cret@127.0.0.1:{port}/2")
    assert await connection.execute("PING") == b"PONG"
    await connection.aclose()
    wrong = RedisConnection(f"redis://:nope@127.0.0.1:{port}")
    with pytest.raises(RedisReplyError, match=r"WRONGPASS|invalid password"):
        await wrong.execute("PING")
    await wrong.aclose()


async def test_a_killed_connection_is_replaced(redis_connection: RedisConnection, redis_client: Redis) -> None:
    """When Redis drops the connection, waiting commands fail with ConnectionError and the next
    command connects afresh."""
    first_id = await redis_connection.execute("CLIENT", "ID")
    await redis_client.client_kill_filter(_id=first_id)
    replies = []
    for _ in range(3):
        try:
            replies.append(await redis_connection.execute("CLIENT", "ID"))
        except ConnectionError:
            continue
    assert replies and replies[-1] != first_id


async def test_a_redis_that_stops_answering_is_dropped() -> None:
    """Every command has a deadline: against a silent server it fails with TimeoutError within
    the timeout, the connection is dropped, and the next command uses a new one."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        number = len(connections)
        while data := await reader.read(65536):
            if number > 1:  # the first connection is never answered
                writer.write(b"+PONG\r\n" * data.count(b"PING"))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = RedisConnection(f"redis://127.0.0.1:{port}", timeout=0.2)
    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(*(connection.execute("PING") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, TimeoutError) for result in results)
    assert asyncio.get_running_loop().time() - started < 0.5
    async with asyncio.timeout(2):
        assert await connection.execute("PING") == b"PONG"
    assert len(connections) == 2
    await connection.aclose()
    server.close()


async def test_nothing_listening_is_a_connection_error() -> None:
    """No Redis at the address: a ConnectionError (an OSError), quickly."""
    connection = RedisConnection(f"redis://127.0.0.1:{closed_port()}", connect_timeout=1.0)
    with pytest.raises(ConnectionRefusedError):
        await connection.execute("PING")


async def test_callers_sharing_a_failed_connect_each_get_a_connection_error() -> None:
    """Concurrent callers that share one failed connection attempt all get its ConnectionError,
    not an AttributeError from the attempt cleared by whichever woke first."""
    connection = RedisConnection(f"redis://127.0.0.1:{closed_port()}", connect_timeout=1.0)
    for _ in range(3):  # each round is a fresh attempt, joined by every caller of that turn
        results = await asyncio.gather(*(connection.execute("PING") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(result, ConnectionRefusedError) for result in results), results


async def test_a_redis_that_returns_is_used_by_every_waiting_caller(
    own_redis: tuple[int, list[subprocess.Popen[bytes]]],
) -> None:
    """Killed and restarted: callers during the outage get connection errors, and once Redis is
    back the callers that arrive together are all served."""
    port, procs = own_redis
    await wait_for_redis(port)
    connection = RedisConnection(f"redis://127.0.0.1:{port}", connect_timeout=1.0)
    assert await connection.execute("PING") == b"PONG"
    procs[0].kill()
    procs[0].wait()
    results = await asyncio.gather(*(connection.execute("PING") for _ in range(20)), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results), results
    procs.append(start_redis(port))
    await wait_for_redis(port)
    assert await asyncio.gather(*(connection.execute("PING") for _ in range(20))) == [b"PONG"] * 20
    await connection.aclose()


async def test_a_frozen_redis_costs_a_reconnecting_caller_its_timeout(
    own_redis: tuple[int, list[subprocess.Popen[bytes]]],
) -> None:
    """Connection dropped, then Redis frozen (SIGSTOP): the kernel still accepts the connect, AUTH
    is never answered, and each caller fails with TimeoutError within its timeout (the limiter
    trusts that), not after connect_timeout or one per handshake step; once Redis thaws, calls go on."""
    port, procs = own_redis
    procs[0].kill()
    procs[0].wait()
    procs[0] = start_redis(port, "--requirepass", "s3cret")
    await wait_for_redis(port, password="s3cret")
    connection = RedisConnection(f"redis://:s3cret@127.0.0.1:{port}/2", timeout=0.25, connect_timeout=2.0)
    admin = Redis(port=port, password="s3cret")
    try:
        await admin.client_kill_filter(_id=await connection.execute("CLIENT", "ID"))
        await asyncio.sleep(0.2)  # the connection sees its end (no command waits: silently)
        os.kill(procs[0].pid, signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        for _ in range(2):  # the attempt (connect_timeout 2 s) outlives its first callers; nor do the next wait
            began = loop.time()
            results = await asyncio.gather(*(connection.execute("PING") for _ in range(5)), return_exceptions=True)
            assert all(isinstance(result, TimeoutError) for result in results), results
            assert loop.time() - began < 0.5
    finally:
        os.kill(procs[0].pid, signal.SIGCONT)
    async with asyncio.timeout(5):
        while True:
            try:
                assert await connection.execute("PING") == b"PONG"
                break
            except (ConnectionError, TimeoutError):
                await asyncio.sleep(0.1)
    await admin.aclose()
    await connection.aclose()


async def _slow_redis(delay: float) -> tuple[asyncio.Server, int]:
    """A server speaking enough RESP for AUTH, SELECT and PING, answering each command ``delay``
    after it came: a Redis under load (a real one cannot be made slow per command)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands = hiredis.Reader()
        while data := await reader.read(65536):
            commands.feed(data)
            while (command := commands.gets()) is not False:
                await asyncio.sleep(delay)
                writer.write(b"+PONG\r\n" if command[0].upper() == b"PING" else b"+OK\r\n")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_slow_handshake_is_bounded_by_the_timeout_in_total() -> None:
    """Each answer in 0.2 s, under the 0.25 s timeout: AUTH, SELECT and the command must not each
    have that much (0.6 s); the caller gets TimeoutError within its timeout."""
    server, port = await _slow_redis(0.2)
    connection = RedisConnection(f"redis://:pw@127.0.0.1:{port}/2", timeout=0.25, connect_timeout=0.25)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        await connection.execute("PING")
    assert loop.time() - began < 0.5
    await connection.aclose()
    server.close()


async def test_connect_and_handshake_share_one_connect_timeout() -> None:
    """AUTH and SELECT, 0.2 s each, under a 0.3 s connect_timeout: the attempt fails at 0.3 s rather
    than each step having 0.3 s of its own."""
    server, port = await _slow_redis(0.2)
    connection = RedisConnection(f"redis://:pw@127.0.0.1:{port}/2", timeout=5.0, connect_timeout=0.3)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        await connection.execute("PING")
    assert loop.time() - began < 0.5
    await connection.aclose()
    server.close()


async def test_a_script_redis_lost_in_a_restart_runs_on_the_new_connection(
    own_redis: tuple[int, list[subprocess.Popen[bytes]]],
) -> None:
    """Restarted, Redis knows no scripts: the call after it reconnects, loads and runs the script
    (NOSCRIPT means it did not run, so it counts once)."""
    port, procs = own_redis
    await wait_for_redis(port)
    connection = RedisConnection(f"redis://127.0.0.1:{port}", connect_timeout=1.0)
    script = LuaScript("return redis.call('INCR', KEYS[1])")
    assert await connection.evalsha(script, ["qg:test:count"], []) == 1
    procs[0].kill()
    procs[0].wait()
    procs.append(start_redis(port))
    await wait_for_redis(port)
    for _ in range(3):
        try:
            reply = await connection.evalsha(script, ["qg:test:count"], [])
            break
        except ConnectionError:  # the old connection's loss, seen by this call
            continue
    assert reply == 1
    await connection.aclose()
