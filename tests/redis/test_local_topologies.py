"""The local Redis topologies are what they claim: checked through redis-py directly."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError

from ..redis_servers import LocalCluster, LocalSentinel, LocalTlsRedis
from ..redis_servers import local_cluster as local_cluster
from ..redis_servers import local_sentinel as local_sentinel
from ..redis_servers import local_tls_redis as local_tls_redis


def cluster_client(cluster: LocalCluster) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in cluster.ports[:3]])


def keys_on_distinct_primaries(cluster: LocalCluster) -> dict[int, str]:
    """One key per primary, found by asking the cluster which primary holds each candidate."""
    found: dict[int, str] = {}
    for i in range(100):
        found.setdefault(cluster.primary_port_for(f"key-{i}"), f"key-{i}")
    return found


async def test_cluster_spreads_keys_over_three_primaries(local_cluster: LocalCluster) -> None:
    assert len(local_cluster.ports) == 6
    assert local_cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in local_cluster.ports[:3])
    assert local_cluster.plain_url == f"redis://127.0.0.1:{local_cluster.ports[0]}/0"
    keys = keys_on_distinct_primaries(local_cluster)
    assert len(keys) == 3
    replicas = {local_cluster.replica_port_of(port) for port in keys}
    assert len(replicas) == 3 and not replicas & set(keys)

    client = cluster_client(local_cluster)
    try:
        for port, key in keys.items():
            await client.set(key, f"on {port}")
        for port, key in keys.items():
            assert await client.get(key) == f"on {port}".encode()
            # The key really lives on that primary: a plain connection to it can read it.
            async with Redis(port=port) as node:
                assert await node.get(key) == f"on {port}".encode()
        # A plain client on one node is redirected for keys of other primaries.
        other = next(key for port, key in keys.items() if port != local_cluster.ports[0])
        async with Redis.from_url(local_cluster.plain_url) as plain:
            with pytest.raises(MovedError):
                await plain.get(other)
        local_cluster.flushall()
        assert [await client.get(key) for key in keys.values()] == [None, None, None]
    finally:
        await client.aclose()


async def test_cluster_failover_promotes_the_replica(local_cluster: LocalCluster) -> None:
    key = "failover-key"
    dead = local_cluster.primary_port_for(key)
    replica = local_cluster.replica_port_of(dead)
    client = cluster_client(local_cluster)
    try:
        await client.set(key, "before")
        async with Redis(port=dead) as primary:
            assert await primary.wait(1, 2000) == 1  # replicated before the crash
        local_cluster.kill(dead)
        assert local_cluster.wait_for_failover(dead) == replica
        assert local_cluster.primary_port_for(key) == replica
        assert await client.get(key) == b"before"
        await client.set(key, "after")
        assert await client.get(key) == b"after"
    finally:
        await client.aclose()
        # Leave the module's cluster whole again: the old primary rejoins as a replica.
        local_cluster.restart(dead)
    assert local_cluster.replica_port_of(replica) == dead


async def test_sentinel_failover_moves_the_primary(local_sentinel: LocalSentinel) -> None:
    s = local_sentinel
    assert s.url == f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in s.sentinel_ports)}/mymaster/0"
    assert s.current_primary_port() == s.primary_port
    sentinel = Sentinel([("127.0.0.1", port) for port in s.sentinel_ports], socket_timeout=1.0)
    try:
        master = sentinel.master_for(s.service)
        await master.set("k", "before")
        assert await master.wait(1, 2000) == 1
        await master.aclose()

        old = s.kill_primary()
        assert old == s.primary_port
        assert s.wait_for_failover(old) == s.replica_port
        assert s.current_primary_port() == s.replica_port

        master = sentinel.master_for(s.service)
        assert await master.get("k") == b"before"
        await master.set("k", "after")
        assert await master.get("k") == b"after"
        await master.aclose()
    finally:
        for client in sentinel.sentinels:
            await client.aclose()


async def test_tls_needs_a_client_certificate(local_tls_redis: LocalTlsRedis) -> None:
    tls = local_tls_redis
    async with Redis(host="127.0.0.1", port=tls.port, **tls.client_kwargs()) as client:
        assert await client.ping()
    async with Redis.from_url(tls.url) as client:
        assert await client.set("k", "v")
        assert await client.get("k") == b"v"
    # Without a client certificate the server ends the handshake: the client sees either the TLS
    # alert "certificate required" or a reset, depending on timing. No retries: they only add backoff.
    no_retry = Retry(NoBackoff(), 0)
    async with Redis(host="127.0.0.1", port=tls.port, ssl=True, ssl_ca_certs=tls.ca_file, retry=no_retry) as anonymous:
        with pytest.raises(RedisConnectionError):
            await anonymous.ping()
