"""The semantic index every node shares through a Redis stream: inserts and purges reach the other
nodes, a late node loads the backlog, and a Redis that goes away stops nothing for good."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from quotagate.cache._semantic import SemanticIndex, Vector
from quotagate.cache._shared_index import SharedSemanticIndex
from quotagate.redis import RedisClient, connect

from ..conftest import closed_port
from ..redis_servers import LocalCluster
from ..redis_servers import local_cluster as local_cluster

REDIS_URL = "redis://127.0.0.1:6379/0"
DIM = 512
CONTEXT = "c" * 64  # the context's hash in a partition name

rng = np.random.default_rng(20)


def unit(dim: int = DIM) -> Vector:
    vector = rng.standard_normal(dim).astype(np.float32)
    normed: Vector = vector / np.linalg.norm(vector)
    return normed


def later(seconds: float = 60.0) -> float:
    return time.time() + seconds


async def eventually(check: Callable[[], bool], within: float = 1.0) -> float:
    """Wait until ``check()`` holds, at most ``within`` seconds; how long it took."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > within:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - began


@dataclass
class Nodes:
    """Gateway nodes sharing one stream, each with its own client and index; stopped and the
    stream removed at the end."""

    url: str = REDIS_URL
    stream_key: str = field(default_factory=lambda: f"test:{uuid.uuid4().hex}:vectors")
    started: list[SharedSemanticIndex] = field(default_factory=list)
    clients: list[RedisClient] = field(default_factory=list)

    def client(self) -> RedisClient:
        client = connect(self.url, timeout=2.0 if "cluster" in self.url else 0.5, connect_timeout=2.0)
        self.clients.append(client)
        return client

    async def start(self, poll_seconds: float = 0.05, max_entries: int = 10_000) -> SharedSemanticIndex:
        node = SharedSemanticIndex(
            self.client(), SemanticIndex(max_entries=max_entries), self.stream_key, poll_seconds=poll_seconds
        )
        await node.start()
        self.started.append(node)
        return node

    async def stop(self) -> None:
        for node in self.started:
            await node.aclose()
        if self.url == REDIS_URL or "cluster" in self.url:
            await self.clients[0].execute("DEL", self.stream_key)
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    group = Nodes()
    yield group
    await group.stop()


async def test_each_node_sees_the_others_inserts_within_a_second(nodes: Nodes) -> None:
    """An insert on one node is found by another's ``nearest`` within a second (default poll)."""
    a, b = await nodes.start(poll_seconds=0.25), await nodes.start(poll_seconds=0.25)
    question = unit()
    await a.add(f"u:alice:{CONTEXT}", question, "u:alice:answer1", later())
    assert a.index.nearest(f"u:alice:{CONTEXT}", question) == ("u:alice:answer1", pytest.approx(1.0))
    await eventually(lambda: b.index.nearest(f"u:alice:{CONTEXT}", question) is not None)
    assert b.index.nearest(f"u:alice:{CONTEXT}", question) == ("u:alice:answer1", pytest.approx(1.0))
    other = unit()
    await b.add(f"u:bob:{CONTEXT}", other, "u:bob:answer1", later())
    await eventually(lambda: a.index.nearest(f"u:bob:{CONTEXT}", other) is not None)
    assert a.index.nearest(f"u:alice:{CONTEXT}", other) == ("u:alice:answer1", pytest.approx(float(question @ other)))


async def test_nodes_share_inserts_and_purges_through_a_cluster(local_cluster: LocalCluster) -> None:
    """On a Redis Cluster too (the stream is one key, on one shard)."""
    nodes = Nodes(url=local_cluster.url)
    try:
        a, b = await nodes.start(), await nodes.start()
        question = unit()
        await a.add(f"u:alice:{CONTEXT}", question, "u:alice:answer1", later())
        await eventually(lambda: b.index.nearest(f"u:alice:{CONTEXT}", question) is not None)
        await b.purge("u:alice")
        await eventually(lambda: len(a.index) == 0)
        await a.add(f"u:bob:{CONTEXT}", unit(), "u:bob:answer1", later())
        late = await nodes.start()
        assert len(late.index) == 1
    finally:
        await nodes.stop()


async def test_a_node_reading_its_own_insert_back_changes_nothing(nodes: Nodes) -> None:
    """A node applies its own entries from the stream too: the entry is replaced by itself."""
    a = await nodes.start()
    question = unit()
    await a.add(f"g:{CONTEXT}", question, "g:answer", later())
    await asyncio.sleep(0.2)  # several polls
    assert len(a.index) == 1
    assert a.index.nearest(f"g:{CONTEXT}", question) == ("g:answer", pytest.approx(1.0))
    a.index.discard("g:answer")
    assert a.index.nearest(f"g:{CONTEXT}", question) is None


async def test_a_purge_reaches_every_node(nodes: Nodes) -> None:
    """A purge of a namespace drops its partitions on every node (not those of a namespace it
    prefixes, nor names with glob characters); a purge of everything empties every node."""
    a, b = await nodes.start(), await nodes.start()
    namespaces = ["u:a", "u:a:b", "u:*", "u:{x}"]
    for namespace in namespaces:
        await a.add(f"{namespace}:{CONTEXT}", unit(), f"{namespace}:answer", later())
    await eventually(lambda: len(b.index) == 4)
    assert await b.purge("u:a") == 1
    assert await b.purge("u:*") == 1
    await eventually(lambda: len(a.index) == 2)
    assert {a.index.nearest(f"{namespace}:{CONTEXT}", unit()) is None for namespace in namespaces} == {True, False}
    assert a.index.nearest(f"u:a:b:{CONTEXT}", unit()) is not None
    assert a.index.nearest(f"u:{{x}}:{CONTEXT}", unit()) is not None
    assert await a.purge() == 2
    await eventually(lambda: len(b.index) == 0)
    await asyncio.sleep(0.1)
    assert len(a.index) == 0 and len(b.index) == 0


async def test_a_node_started_later_loads_the_live_backlog(nodes: Nodes) -> None:
    """A new node indexes what the stream holds, but not expired entries, entries purged since, or
    a key's older versions."""
    a = await nodes.start()
    kept, replaced, newer, after = unit(), unit(), unit(), unit()
    await a.add(f"u:a:{CONTEXT}", kept, "u:a:kept", later())
    await a.add(f"u:a:{CONTEXT}", replaced, "u:a:again", later())
    await a.add(f"u:a:{CONTEXT}", newer, "u:a:again", later())
    await a.add(f"u:a:{CONTEXT}", unit(), "u:a:expired", later(-1.0))
    await a.add(f"u:a:b:{CONTEXT}", unit(), "u:a:b:purged", later())
    await a.purge("u:a:b")
    await a.add(f"u:a:b:{CONTEXT}", after, "u:a:b:after", later())
    late = await nodes.start()
    assert len(late.index) == 3
    assert late.index.nearest(f"u:a:{CONTEXT}", kept) == ("u:a:kept", pytest.approx(1.0))
    assert late.index.nearest(f"u:a:{CONTEXT}", newer) == ("u:a:again", pytest.approx(1.0))
    probe = unit()
    assert late.index.nearest(f"u:a:b:{CONTEXT}", probe) == ("u:a:b:after", pytest.approx(float(after @ probe)))
    # And it follows the stream from there.
    await a.add(f"t:gold:{CONTEXT}", unit(), "t:gold:next", later())
    await eventually(lambda: len(late.index) == 4)


async def test_the_backlog_stops_at_a_purge_of_everything_and_at_capacity(nodes: Nodes) -> None:
    """Entries before a purge of everything are not loaded; beyond the index's capacity, the newest
    are, and the oldest of them is the first to go."""
    a = await nodes.start()
    before = unit()
    await a.add(f"g:{CONTEXT}", before, "g:before", later())
    await a.purge()
    questions = [unit() for _ in range(1200)]  # more than a page of the stream
    for n, question in enumerate(questions):
        await a.add(f"g:{CONTEXT}", question, f"g:{n}", later())
    everything = await nodes.start()
    assert len(everything.index) == 1200
    assert everything.index.nearest(f"g:{CONTEXT}", before) != ("g:before", pytest.approx(1.0))
    small = await nodes.start(max_entries=700)
    assert len(small.index) == 700
    assert small.index.nearest(f"g:{CONTEXT}", questions[499]) != ("g:499", pytest.approx(1.0))
    assert small.index.nearest(f"g:{CONTEXT}", questions[500]) == ("g:500", pytest.approx(1.0))
    await small.add(f"g:{CONTEXT}", unit(), "g:one-more", later())
    assert len(small.index) == 700
    assert small.index.nearest(f"g:{CONTEXT}", questions[500]) != ("g:500", pytest.approx(1.0))
    assert small.index.nearest(f"g:{CONTEXT}", questions[501]) == ("g:501", pytest.approx(1.0))


async def test_an_entry_no_node_can_use_is_skipped(nodes: Nodes) -> None:
    """A malformed entry, or one of another dimension, is skipped; the entries after it are applied."""
    a, b = await nodes.start(), await nodes.start()
    await a.add(f"g:{CONTEXT}", unit(), "g:first", later())
    await eventually(lambda: len(b.index) == 1)
    client = nodes.client()
    await client.execute("XADD", nodes.stream_key, "*", "op", "add", "partition", f"g:{CONTEXT}")
    await client.execute(
        "XADD", nodes.stream_key, "*", "op", "add", "partition", f"g:{CONTEXT}", "key", "g:short",
        "vector", unit(8).tobytes(), "expires_at", repr(later()),
    )  # fmt: skip
    await client.execute("XADD", nodes.stream_key, "*", "op", "rename")
    await a.add(f"g:{CONTEXT}", unit(), "g:second", later())
    await eventually(lambda: len(b.index) == 2)
    late = await nodes.start()
    assert len(late.index) == 2


class RedisProcess:
    """A redis-server of the test's own, to stop and start again on the same port."""

    def __init__(self) -> None:
        self.port = closed_port()
        self.dir = tempfile.mkdtemp(prefix="quotagate-stream-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "PING"], capture_output=True).stdout != b"PONG\n":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is needed")
    server = RedisProcess()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


async def test_a_redis_that_goes_away_does_not_stop_the_poll(
    redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis is away, writes raise its errors, the poll warns once and keeps trying; when it is
    back, the nodes share inserts again."""
    redis_process.start()
    nodes = Nodes(url=redis_process.url)
    try:
        a, b = await nodes.start(), await nodes.start()
        await a.add(f"g:{CONTEXT}", unit(), "g:before", later())
        await eventually(lambda: len(b.index) == 1)
        redis_process.kill()
        with caplog.at_level(logging.WARNING, logger="quotagate.cache"):
            with pytest.raises((ConnectionError, TimeoutError)):
                await a.add(f"g:{CONTEXT}", unit(), "g:during", later())
            assert len(a.index) == 2  # indexed here all the same
            with pytest.raises((ConnectionError, TimeoutError)):
                await b.purge("g")
            assert len(b.index) == 0
            await asyncio.sleep(0.5)  # about ten polls
        assert len([r for r in caplog.records if "cannot be read" in r.getMessage()]) == 2  # once per node
        assert all(node._poller is not None and not node._poller.done() for node in (a, b))
        redis_process.start()  # empty: the stream is gone with the old process
        await a.add(f"g:{CONTEXT}", unit(), "g:after", later())
        await eventually(lambda: b.index.nearest(f"g:{CONTEXT}", unit()) is not None, within=2.0)  # "g:after"
    finally:
        await nodes.stop()


async def test_a_node_started_while_redis_is_away_loads_the_backlog_later(redis_process: RedisProcess) -> None:
    """``start`` does not fail while Redis is away; the node loads the backlog when it answers."""
    nodes = Nodes(url=redis_process.url)
    try:
        late = await nodes.start()
        assert len(late.index) == 0
        redis_process.start()
        writer = SharedSemanticIndex(nodes.client(), SemanticIndex(), nodes.stream_key)
        await writer.add(f"g:{CONTEXT}", unit(), "g:one", later())
        await eventually(lambda: len(late.index) == 1, within=2.0)
    finally:
        await nodes.stop()
