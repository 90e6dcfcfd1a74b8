"""Gateways on a real 6-node Redis Cluster (3 primaries, 3 replicas): exact limits, every Redis
feature (limits across slots, breakers, the ledger's stream, alerts), a primary failover under
load, and a /ready that tells the truth (issue 19)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from quotagate.redis import LuaScript, RedisReplyError, connect

from ..conftest import ServerThread, cli_key
from ..redis_servers import LocalCluster
from ..redis_servers import local_cluster as local_cluster
from ..server.test_database_outage import assert_rows_written
from ..server.test_database_outage import stopped as stopped
from .scenario import Load, burst, gateways_on, ready, run_load_on


async def test_the_pipelined_connection_reports_a_cluster_node(local_cluster: LocalCluster) -> None:
    """``redis://`` to one node of a Cluster is a misconfiguration the check names."""
    client = connect(local_cluster.plain_url, timeout=2.0, connect_timeout=2.0)
    with pytest.raises(ConnectionError, match=r"redis\+cluster://"):
        await client.check()
    await client.aclose()


async def test_commands_reach_the_shard_of_their_key(local_cluster: LocalCluster) -> None:
    """Keys on every primary, scripts and the stream commands the ledger sends, through one client."""
    local_cluster.flushall()
    client = connect(local_cluster.url, timeout=2.0, connect_timeout=2.0)
    try:
        await client.check()
        keys = [f"qg:test:{n}" for n in range(30)]
        assert len({local_cluster.primary_port_for(key) for key in keys}) == 3
        for key in keys:
            assert await client.execute("SET", key, "v", "NX", "EX", 30) == b"OK"
        assert [await client.execute("GET", key) for key in keys] == [b"v"] * 30
        with pytest.raises(RedisReplyError, match="same key slot"):
            await client.evalsha(LuaScript("return 1"), ["{a}x", "{b}y"], [])
        assert await client.execute("XGROUP", "CREATE", "qg:ledger", "g", "0", "MKSTREAM") == b"OK"
        entry = await client.execute("XADD", "qg:ledger", "*", "b", "[1]", "n", 1)
        reply = await client.execute("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "qg:ledger", ">")
        assert reply == [[b"qg:ledger", [[entry, [b"b", b"[1]", b"n", b"1"]]]]]
    finally:
        await client.aclose()


def test_gateways_on_a_cluster_hold_limits_exactly_and_write_every_row(
    tmp_path: Path,
    local_cluster: LocalCluster,
    postgres_url: str,
    mock_upstream: ServerThread,
    stopped: list[subprocess.Popen[bytes]],
) -> None:
    """Two gateways on one Cluster: a key's 40 requests a minute admit exactly 40 of 100 sent at
    once; a model's 30 a minute (a limit in another slot than the keys') exactly 30 of 50 sent by
    two keys; every request answered has its ledger row; /ready says ok."""
    local_cluster.flushall()
    nodes = gateways_on(tmp_path, postgres_url, mock_upstream.url, local_cluster.url)
    for node in nodes:
        node.start()
        assert node.process is not None
        stopped.append(node.process)
    ports = [node.port for node in nodes]
    load = Load()
    asyncio.run(burst(ports, nodes[0].key, 100, load))
    assert load.counts() == {(200, None): 40, (429, "rate_limit_exceeded"): 60}, load.counts()
    # Two fresh keys, whose own 40 a minute do not bind: the model's 30 does, in another slot.
    second, third = (cli_key(nodes[0].config, env=nodes[0].env) for _ in range(2))
    shared = Load()

    async def two_keys() -> None:
        await asyncio.gather(
            burst(ports, second, 25, shared, model="house-model"),
            burst(ports, third, 25, shared, model="house-model", tag="b"),
        )

    asyncio.run(two_keys())
    assert shared.counts() == {(200, None): 30, (429, "rate_limit_exceeded"): 20}, shared.counts()
    for each in (load, shared):
        # Refused requests have their rows too (status 429, no tokens).
        assert_rows_written(postgres_url, each, {a.request_id for a in each.answers})
    for port in ports:
        status, body, _ = asyncio.run(ready(port))
        assert (status, body["checks"]["redis"]) == (200, "ok"), body


def test_a_primary_failover_under_load(
    tmp_path: Path,
    postgres_url: str,
    mock_upstream: ServerThread,
    stopped: list[subprocess.Popen[bytes]],
) -> None:
    """The primary holding the ledger's stream is killed under load from two gateways: requests
    whose keys it held get 503 (``on_store_failure: closed``), none a 500, none waits long; /ready
    says not ready while a shard has no primary; once its replica has taken over, every request is
    served again and /ready says ok; and every request answered 200 has its row, those the dead
    primary took with it too."""
    with LocalCluster() as cluster:
        nodes = gateways_on(tmp_path, postgres_url, mock_upstream.url, cluster.url, extra="")
        config = nodes[0].config
        config.write_text(config.read_text().replace("rpm: 40, algorithm: sliding-window", "rpm: 100000"))
        for node in nodes:
            node.start()
            assert node.process is not None
            stopped.append(node.process)
        ports = [node.port for node in nodes]
        victim = cluster.primary_port_for("qg:ledger")
        load, stop = Load(), asyncio.Event()
        marks: dict[str, float] = {}
        during: list[tuple[int, dict[str, object], float]] = []

        async def run() -> None:
            async def failover() -> None:
                await asyncio.sleep(1.0)
                cluster.kill(victim)
                marks["killed"] = time.monotonic()
                during.append(await ready(ports[0]))
                await asyncio.to_thread(cluster.wait_for_failover, victim)
                marks["failed_over"] = time.monotonic()
                await asyncio.sleep(4.5)
                stop.set()

            await asyncio.gather(run_load_on(ports, nodes[0].key, load, stop), failover())

        asyncio.run(run())
        statuses = {a.status for a in load.answers}
        assert statuses <= {200, 503}, load.counts()
        assert all(a.shaped for a in load.answers), [a for a in load.answers if not a.shaped][:3]
        slowest = max(a.ended - a.started for a in load.answers)
        assert slowest < 2.0, f"a request waited {slowest:.2f}s"
        assert during[0][0] == 503 and during[0][1]["checks"]["redis"] != "ok", during  # type: ignore[index]
        # Served again soon after the replica took over (redis-py learns the new slot map at its
        # next error; the limiter tries Redis again after its 1 s of failing closed), and for good.
        last_refused = max(a.ended for a in load.answers if a.status != 200)
        assert last_refused - marks["failed_over"] < 3.0, last_refused - marks["failed_over"]
        assert len(load.between(last_refused, time.monotonic())) > 50
        for port in ports:
            status, body, _ = asyncio.run(ready(port))
            assert status == 200, body
        assert sum(a.status == 200 for a in load.answers) > 100
        # Every answered request has its row (refused ones too), those whose stream entry the dead
        # primary took with it included; a request no client saw answered has none.
        assert_rows_written(postgres_url, load, {a.request_id for a in load.answers}, timeout=30)
