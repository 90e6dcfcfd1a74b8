"""``rediss://`` with a private CA and a client certificate, on both clients (issue 19)."""

from __future__ import annotations

import pytest

from quotagate.limits import Limit, RedisStore, Unit
from quotagate.redis import connect

from ..redis_servers import LocalTlsRedis
from ..redis_servers import local_tls_redis as local_tls_redis


@pytest.mark.parametrize("suffix", ["", "&client=redis-py"])
async def test_a_private_ca_and_a_client_certificate(local_tls_redis: LocalTlsRedis, suffix: str) -> None:
    client = connect(local_tls_redis.url + suffix, timeout=2.0, connect_timeout=2.0)
    try:
        await client.check()
        assert await client.execute("ECHO", "over tls") == b"over tls"
    finally:
        await client.aclose()


@pytest.mark.parametrize("suffix", ["", "&client=redis-py"])
async def test_without_the_client_certificate_the_server_refuses(local_tls_redis: LocalTlsRedis, suffix: str) -> None:
    url = f"rediss://127.0.0.1:{local_tls_redis.port}/0?ssl_ca_certs={local_tls_redis.ca_file}{suffix}"
    client = connect(url, timeout=2.0, connect_timeout=2.0)
    with pytest.raises((ConnectionError, OSError)):
        await client.execute("PING")
    await client.aclose()


async def test_without_the_ca_the_server_is_not_trusted(local_tls_redis: LocalTlsRedis) -> None:
    url = local_tls_redis.url.replace(f"ssl_ca_certs={local_tls_redis.ca_file}&", "")
    client = connect(url, timeout=2.0, connect_timeout=2.0)
    with pytest.raises((ConnectionError, OSError), match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await client.execute("PING")
    await client.aclose()


async def test_limits_over_tls(local_tls_redis: LocalTlsRedis) -> None:
    store = RedisStore.from_url(local_tls_redis.url, timeout=2.0)
    limit = Limit("tls:rpm", Unit.REQUESTS, 2, period=60)
    try:
        await store.reset([limit])
        allowed = [(await store.acquire([limit], [1])).allowed for _ in range(3)]
        assert allowed == [True, True, False]
    finally:
        await store.aclose()
