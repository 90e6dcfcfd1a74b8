"""Redis Cluster and Sentinel (and standalone Redis on request) through redis-py.

redis-py knows what quotagate's own pipelined connection does not: a Cluster's slot map and its
MOVED/ASK redirections, failovers, and a Sentinel's view of which server is the primary. This
adapter gives its clients the small interface the rest of quotagate speaks (``RedisClient``):

- Replies come back as Redis sent them (bytes, lists, integers), as on the pipelined connection:
  redis-py's reply parsers are dropped for the commands quotagate sends, so the ledger reads a
  stream entry the same way whichever client fetched it.
- Errors are mapped at this boundary: a Redis error reply raises ``RedisReplyError``; a lost or
  refused connection (a primary that failed over included) raises ``ConnectionError``; a call
  past its deadline raises ``TimeoutError``.
- Every call ends within ``timeout``, whatever redis-py retries inside it: the limiter relies on
  the store's own deadline, as it does with the pipelined connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ._pipelined import LuaScript, RedisReplyError

# Replies redis-py itself needs parsed to work a Cluster (its slot map, its command table).
_KEPT_PARSERS = frozenset({"CLUSTER SLOTS", "CLUSTER SHARDS", "CLUSTER NODES", "COMMAND", "COMMAND INFO"})


def _raw_replies(parsers: Any) -> None:
    """Drop redis-py's reply parsers but those it needs, in place (a Cluster's nodes share the dict)."""
    for name in [name for name in parsers if str(name).upper() not in _KEPT_PARSERS]:
        del parsers[name]


class RedisPyClient:
    """A redis-py ``Redis`` or ``RedisCluster`` client behind quotagate's ``RedisClient`` interface.

    ``describe`` names the topology in errors and in ``/ready`` (the URL without its password);
    ``timeout`` None leaves the deadline to the client's own socket timeouts (a caller's client);
    ``raw_replies`` False leaves the client's reply parsers as they are (a caller's client, used
    for scripts alone).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        timeout: float | None,
        describe: str,
        sentinel: Sentinel | None = None,
        raw_replies: bool = True,
        fresh_cluster: Callable[[], RedisCluster] | None = None,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.cluster = isinstance(client, RedisCluster)
        self.describe = describe
        self._sentinel = sentinel
        self._fresh_cluster = fresh_cluster
        if raw_replies:
            _raw_replies(client.response_callbacks)

    async def execute(self, *args: Any) -> Any:
        """One command; its reply as Redis sent it."""
        async with self._deadline():
            return await self.client.execute_command(*args)

    async def evalsha(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script`` by its SHA1; where Redis (on a Cluster: the shard of the keys) does not
        know it, by its source, which loads it there (NOSCRIPT means it did not run: nothing twice)."""
        async with self._deadline():
            try:
                return await self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                return await self.client.execute_command("EVAL", script.source, len(keys), *keys, *args)

    async def check(self) -> None:
        """Raise unless every part of the topology that serves keys answers: each primary of a
        Cluster, with the Cluster's state ok; the primary a Sentinel names."""
        async with self._deadline():
            if isinstance(self.client, RedisCluster):
                await self._check_cluster()
            else:
                await self.client.execute_command("PING")  # type: ignore[no-untyped-call]

    async def _check_cluster(self) -> None:
        # Asked of a client of its own, which learns the slot map afresh: the serving client's map
        # may still name a primary that has failed over (it learns better at its next error).
        assert self._fresh_cluster is not None
        fresh = self._fresh_cluster()
        _raw_replies(fresh.response_callbacks)
        try:
            await fresh.initialize()
            primaries = fresh.get_primaries()
            if not primaries:
                raise ConnectionError(f"no primary of the Redis Cluster at {self.describe} answers")
            for node in primaries:
                info = await fresh.execute_command("CLUSTER INFO", target_nodes=node)
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    raise ConnectionError(f"Redis Cluster node {node.name} reports {_state(text)}")
        finally:
            await fresh.aclose()

    def _deadline(self) -> _Deadline:
        return _Deadline(self.timeout, self.describe)

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._sentinel is not None:
            for server in self._sentinel.sentinels:
                await server.aclose()


def _state(info: str) -> str:
    for line in info.splitlines():
        if line.startswith("cluster_state:"):
            return line.strip()
    return "no cluster_state"


class _Deadline:
    """``asyncio.timeout`` for one call, with redis-py's errors mapped to the builtins callers know."""

    __slots__ = ("_describe", "_timeout", "_timer")

    def __init__(self, timeout: float | None, describe: str) -> None:
        self._timeout = timeout
        self._describe = describe
        self._timer = asyncio.timeout(timeout)

    async def __aenter__(self) -> None:
        await self._timer.__aenter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            await self._timer.__aexit__(kind, exc, tb)
        except TimeoutError as timed_out:
            raise TimeoutError(f"Redis ({self._describe}) did not answer within {self._timeout:g}s") from timed_out
        if exc is None:
            return
        if isinstance(exc, redis_errors.TimeoutError):
            raise TimeoutError(f"Redis ({self._describe}): {exc}") from exc
        if isinstance(exc, redis_errors.ResponseError) and not isinstance(exc, redis_errors.ClusterError):
            raise RedisReplyError(str(exc)) from exc
        if isinstance(exc, redis_errors.RedisClusterException):
            # Refused before sending: keys of one script in different slots (a caller's mistake).
            raise RedisReplyError(str(exc)) from exc
        if isinstance(exc, redis_errors.RedisError):
            # A lost, refused or redirected-too-often connection, a Cluster that is down, a
            # Sentinel that knows no primary: Redis is unavailable for now.
            raise ConnectionError(f"Redis ({self._describe}): {type(exc).__name__}: {exc}") from exc


# RESP2, as the pipelined connection speaks (redis-py 8 defaults to RESP3, whose maps and sets
# would give the same command a reply of another shape).
_RESP2 = 2


def _no_retries() -> Retry:
    # One more attempt at once, never a backoff: after a failover the second attempt reaches the
    # new primary, and the call's deadline, not a retry policy, bounds the wait.
    return Retry(NoBackoff(), 1)


def cluster_client(
    nodes: Sequence[tuple[str, int]], options: dict[str, Any], *, timeout: float, connect_timeout: float, describe: str
) -> RedisPyClient:
    def make() -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=_no_retries(),
            # A shard without a primary (mid-failover) fails the calls for its keys, not every call.
            require_full_coverage=False,
            protocol=_RESP2,
            **options,
        )

    return RedisPyClient(make(), timeout=timeout, describe=describe, fresh_cluster=make)


def sentinel_client(
    sentinels: Sequence[tuple[str, int]],
    service: str,
    options: dict[str, Any],
    sentinel_options: dict[str, Any],
    *,
    timeout: float,
    connect_timeout: float,
    describe: str,
) -> RedisPyClient:
    sentinel = Sentinel(
        list(sentinels),
        sentinel_kwargs={
            "socket_timeout": connect_timeout,
            "socket_connect_timeout": connect_timeout,
            "protocol": _RESP2,
            **sentinel_options,
        },
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=_no_retries(),
        protocol=_RESP2,
        **options,
    )
    client = sentinel.master_for(service)
    return RedisPyClient(client, timeout=timeout, describe=describe, sentinel=sentinel)


def standalone_client(url: str, *, timeout: float, connect_timeout: float, describe: str) -> RedisPyClient:
    client = Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=connect_timeout, retry=_no_retries(), protocol=_RESP2
    )
    return RedisPyClient(client, timeout=timeout, describe=describe)
