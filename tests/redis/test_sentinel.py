"""Gateways on Redis with Sentinel (one primary, one replica, three Sentinels): exact limits, and a
failover of the primary under load (issue 19)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from quotagate.redis import connect

from ..conftest import ServerThread, cli_key
from ..redis_servers import LocalSentinel
from ..redis_servers import local_sentinel as local_sentinel
from ..server.test_database_outage import assert_rows_written
from ..server.test_database_outage import stopped as stopped
from .scenario import Load, burst, gateways_on, ready, run_load_on


async def test_the_client_follows_the_primary_the_sentinels_name(local_sentinel: LocalSentinel) -> None:
    client = connect(local_sentinel.url, timeout=2.0, connect_timeout=2.0)
    try:
        await client.check()
        assert await client.execute("SET", "qg:test:a", "1") == b"OK"
        old = local_sentinel.kill_primary()
        with pytest.raises(ConnectionError):
            await client.check()  # the Sentinels still name the dead primary
        await asyncio.to_thread(local_sentinel.wait_for_failover, old)
        await client.check()
        assert await client.execute("INCR", "qg:test:b") == 1
        assert local_sentinel.current_primary_port() == local_sentinel.replica_port
    finally:
        await client.aclose()


def test_gateways_on_sentinel_hold_limits_and_survive_a_failover(
    tmp_path: Path,
    local_sentinel: LocalSentinel,
    postgres_url: str,
    mock_upstream: ServerThread,
    stopped: list[subprocess.Popen[bytes]],
) -> None:
    """Two gateways on Sentinel: a key's 40 requests a minute admit exactly 40 of 100 sent at
    once. Then, under load, the primary is killed: requests get 503 (``on_store_failure: closed``),
    none a 500, none waits long; /ready says not ready until the Sentinels promote the replica;
    then every request is served and /ready says ok; every answered request has its row."""
    nodes = gateways_on(tmp_path, postgres_url, mock_upstream.url, local_sentinel.url)
    for node in nodes:
        node.start()
        assert node.process is not None
        stopped.append(node.process)
    ports = [node.port for node in nodes]
    exact = Load()
    asyncio.run(burst(ports, nodes[0].key, 100, exact))
    assert exact.counts() == {(200, None): 40, (429, "rate_limit_exceeded"): 60}, exact.counts()
    assert_rows_written(postgres_url, exact, {a.request_id for a in exact.answers})

    # A key of the same tier, fresh: 40 a minute is more than the load below sends.
    key = cli_key(nodes[0].config, env=nodes[0].env)
    load, stop = Load(), asyncio.Event()
    marks: dict[str, float] = {}
    during: list[tuple[int, dict[str, object], float]] = []

    async def run() -> None:
        async def failover() -> None:
            await asyncio.sleep(0.5)
            old = local_sentinel.kill_primary()
            marks["killed"] = time.monotonic()
            during.append(await ready(ports[0]))
            await asyncio.to_thread(local_sentinel.wait_for_failover, old)
            marks["failed_over"] = time.monotonic()
            await asyncio.sleep(4.5)
            stop.set()

        await asyncio.gather(run_load_on(ports, key, load, stop, workers=2), failover())

    asyncio.run(run())
    assert {a.status for a in load.answers} <= {200, 429, 503}, load.counts()
    assert all(a.shaped for a in load.answers), [a for a in load.answers if not a.shaped][:3]
    slowest = max(a.ended - a.started for a in load.answers)
    assert slowest < 2.0, f"a request waited {slowest:.2f}s"
    assert during[0][0] == 503 and during[0][1]["checks"]["redis"] != "ok", during  # type: ignore[index]
    refused = [a.ended for a in load.answers if a.status == 503]
    assert refused, "the primary's death went unnoticed"
    assert max(refused) - marks["failed_over"] < 3.0, max(refused) - marks["failed_over"]
    assert any(a.status == 200 and a.ended > marks["failed_over"] for a in load.answers)
    for port in ports:
        status, body, _ = asyncio.run(ready(port))
        assert status == 200, body
    assert_rows_written(postgres_url, load, {a.request_id for a in load.answers}, timeout=30)
