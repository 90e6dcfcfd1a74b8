"""The Redis store: one Lua script, one round trip, per decision.

Scripts go by EVALSHA and, when Redis answers NOSCRIPT (after a restart, a failover or
SCRIPT FLUSH), are loaded and retried: nothing breaks and nothing is counted
twice, because a NOSCRIPT reply means the script did not run.

Redis Cluster: keys that one decision touches must share a slot for one script to touch them
all. The policy gives every key of a principal the same hash tag (``{k:ID}``); shared limits
(user, tier, model, global) carry their own tags, so they usually live in other slots. On a
cluster, a decision is then made one slot group at a time, shared groups first; when a later
group denies, the earlier groups' charges are refunded at once. So a shared limit can be held for
one round trip by a request that another slot then refuses, but nothing is lost or kept.

The store speaks through any ``quotagate.redis.RedisClient`` (``RedisStore.from_url`` chooses
one by the URL: the pipelined ``RedisConnection`` for one server, redis-py for a Cluster or a
Sentinel), or through a redis-py ``Redis`` or ``RedisCluster`` that a library user already has.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..redis import RedisClient, connect
from ..redis._pipelined import LuaScript, Packed, RedisConnection, _pack
from ._algorithms import Outcome
from ._model import Algorithm, Decision, Limit, LimitStatus
from ._params import calendar_bounds, make_decision, params

if TYPE_CHECKING:
    # redis-py is imported only where it is used: a gateway on one Redis server talks through
    # RedisConnection alone, and spares its start-up redis-py's memory and import time (bench/NOTES.md).
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

# Encoded keys and parameters kept per limit key; beyond this many, the cache starts afresh.
_FRAGMENTS_MAX = 50_000
_PLAIN_HEAD = Packed("", "", "0")  # no lease, Redis's own clock, a real decision
_KEY = operator.attrgetter("key")


def lua_script(package: str, name: str) -> str:
    """A script of ``package``'s lua/ folder, with the shared prelude (clock, fmt, windows) before it."""
    prelude = resources.files("quotagate.limits").joinpath("lua").joinpath("prelude.lua").read_text()
    return prelude + resources.files(package).joinpath("lua").joinpath(name).read_text()


ACQUIRE_LUA = lua_script("quotagate.limits", "acquire.lua")
SETTLE_LUA = lua_script("quotagate.limits", "settle.lua")
_RELEASE_LUA = LuaScript("for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end return 1")
_RENEW_LUA = LuaScript(
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 "
    "for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[i + 1]), ARGV[1]) "
    "redis.call('PEXPIRE', KEYS[i], math.ceil(2 * tonumber(ARGV[i + 1]))) end return 1"
)


def _decision(limits: Sequence[Limit], costs: Sequence[int], reply: list[Any], lease: str | None) -> Decision:
    """The acquire script's reply: {allowed, denied index, retry ms, then per limit: ok, used,
    remaining, reset ms, window}."""
    if reply[0] == 1:
        # Admitted: the common case, read straight into statuses.
        statuses = []
        at = 4
        for limit in limits:
            reset = float(reply[at + 2])
            statuses.append(
                LimitStatus(
                    limit, reply[at], reply[at + 1], reset / 1000.0 if reset > 0 else 0.0, float(reply[at + 3]) / 1000.0
                )
            )
            at += 5
        return Decision(True, tuple(statuses), None, 0.0, lease, tuple(costs))
    denied = int(reply[1]) - 1
    outcomes: list[Outcome] = []
    for index in range(len(limits)):
        ok, used, remaining, reset, window = reply[3 + 5 * index : 8 + 5 * index]
        retry = float(reply[2]) if index == denied else 0.0
        outcomes.append((ok == 1, retry, None, int(used), int(remaining), float(reset), float(window)))
    return make_decision(limits, costs, outcomes, lease)


class RedisStore:
    """``RedisStore(redis_client)`` or ``RedisStore.from_url(url)``; ``clock`` only for tests that
    move time by hand."""

    def __init__(
        self,
        client: RedisClient | Redis | RedisCluster,
        *,
        prefix: str = "qg:",
        clock: Callable[[], float] | None = None,
        split_by_slot: bool | None = None,
    ) -> None:
        self.client = client
        self.redis = _as_redis_client(client)
        self.prefix = prefix
        self._clock = clock
        # On a Cluster, a script's keys must share a slot: decisions go one slot group at a time.
        self._split = self.redis.cluster if split_by_slot is None else split_by_slot
        self._connection = self.redis if isinstance(self.redis, RedisConnection) else None
        # The deadline the client puts on every call itself (None for a redis-py client of the
        # caller's own: it has its socket timeouts, and the limiter adds its own deadline).
        self.call_timeout: float | None = self.redis.timeout
        self._acquire_script = LuaScript(ACQUIRE_LUA)
        self._settle_script = LuaScript(SETTLE_LUA)
        # limit key -> (the Limit, its encoded key, its encoded parameters, the calendar window)
        self._fragments: dict[str, tuple[Limit, Packed, Packed, object]] = {}
        # the keys of a set of limits -> (the limits, valid until, the command's fixed head, the
        # limits' encoded parameters): see _acquire_command
        self._commands: dict[tuple[str, ...], tuple[Sequence[Limit], float, bytes, list[bytes]]] = {}

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.25, **kwargs: Any) -> RedisStore:
        """A store over the client ``quotagate.redis.connect`` chooses for ``url`` (one server,
        ``redis+cluster://`` or ``redis+sentinel://``); every call fails with TimeoutError after
        ``timeout`` seconds."""
        return cls(connect(url, timeout=timeout, connect_timeout=2.0), **kwargs)

    def _now(self) -> tuple[float, str]:
        if self._clock is None:
            return time.time(), ""
        now = self._clock()
        return now, repr(now * 1000.0)

    async def acquire(self, limits: Sequence[Limit], costs: Sequence[int], lease: str | None = None) -> Decision:
        connection = self._connection
        if connection is not None and not (self._split or lease or self._clock):
            # The gateway's case, in one coroutine: encoded fragments, one round trip.
            command = self._acquire_command(limits, costs, time.time())
            reply = await connection.run_script(self._acquire_script, command)
            return _decision(limits, costs, reply, None)
        if not self._split:
            return await self._acquire_group(limits, costs, lease, dry_run=False)
        return await self._acquire_by_slot(limits, costs, lease)

    def _acquire_command(self, limits: Sequence[Limit], costs: Sequence[int], now: float) -> bytes:
        """The acquire script's EVALSHA, in RESP, for the gateway's decisions.

        All of it but the costs is the same for every request that meets the same limits (one key
        and model). That part is encoded once per set of limits (and calendar window); a request
        encodes only its costs, a fraction of the work of encoding the whole command
        (bench/NOTES.md).
        """
        names = tuple(map(_KEY, limits))
        entry = self._commands.get(names)
        # The same definitions (a reload may change the amounts behind the same keys).
        if entry is None or entry[0] != tuple(limits) or now >= entry[1]:
            keys, args = self._encoded_call(limits, costs, now, _PLAIN_HEAD)
            head = _pack(("EVALSHA", self._acquire_script.sha, len(keys), *keys, _PLAIN_HEAD), header=False)
            count = 3 + len(keys) + _PLAIN_HEAD.count + sum(1 + fixed.count for fixed in args[2::2])
            valid_until = min(
                (calendar_bounds(lim.calendar, lim.timezone, now)[1] for lim in limits if lim.calendar is not None),
                default=math.inf,
            )
            if len(self._commands) >= _FRAGMENTS_MAX:
                self._commands.clear()
            entry = self._commands[names] = (
                tuple(limits),
                valid_until,
                b"*%d\r\n%s" % (count, head),
                [fixed.data for fixed in args[2::2]],
            )
        parts = [entry[2]]
        fixed_parts = entry[3]
        for index, cost in enumerate(costs):
            digits = b"%d" % cost
            parts.append(b"$%d\r\n%s\r\n" % (len(digits), digits))
            parts.append(fixed_parts[index])
        return b"".join(parts)

    def _encoded_call(
        self, limits: Sequence[Limit], costs: Sequence[int], now: float, head: Packed
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV of the acquire script: ``head``, then each limit's cost and parameters."""
        keys: list[Any] = []
        args: list[Any] = [head]
        for limit, cost in zip(limits, costs, strict=True):
            key, fixed = self._encoded(limit, now)
            keys.append(key)
            args.append(cost)
            args.append(fixed)
        return keys, args

    def _encoded(self, limit: Limit, now: float) -> tuple[Packed, Packed]:
        """A limit's key and fixed parameters, encoded once (a calendar quota's once per window)."""
        entry = self._fragments.get(limit.key)
        static = limit.static_params
        window: object = None
        if static is None:
            assert limit.calendar is not None
            window = calendar_bounds(limit.calendar, limit.timezone, now)
        if entry is not None and entry[0] is limit and entry[3] is window:
            return entry[1], entry[2]
        code, a, b, c, d = static or params(limit, now)
        key, fixed = Packed(self.prefix + limit.key), Packed(code, a, b, c, d)
        if len(self._fragments) >= _FRAGMENTS_MAX:
            self._fragments.clear()
        self._fragments[limit.key] = (limit, key, fixed, window)
        return key, fixed

    async def _acquire_group(
        self, limits: Sequence[Limit], costs: Sequence[int], lease: str | None, *, dry_run: bool
    ) -> Decision:
        now, override = self._now()
        if self._connection is not None:
            # ARGV[1..3]: lease, clock override, dry run; the common head is encoded once.
            head = (
                _PLAIN_HEAD
                if not (lease or override or dry_run)
                else Packed(lease or "", override, "1" if dry_run else "0")
            )
            keys, args = self._encoded_call(limits, costs, now, head)
            reply = await self._connection.evalsha(self._acquire_script, keys, args, len(keys))
        else:
            plain: list[Any] = [lease or "", override, "1" if dry_run else "0"]
            for limit, cost in zip(limits, costs, strict=True):
                plain.append(cost)
                plain.extend(params(limit, now))
            reply = await self.redis.evalsha(self._acquire_script, [self.prefix + limit.key for limit in limits], plain)
        return _decision(limits, costs, reply, lease)

    async def _acquire_by_slot(self, limits: Sequence[Limit], costs: Sequence[int], lease: str | None) -> Decision:
        from redis.crc import key_slot  # only on a cluster

        groups: dict[int, list[int]] = {}
        for index, limit in enumerate(limits):
            groups.setdefault(key_slot((self.prefix + limit.key).encode()), []).append(index)
        # Shared limits first: the principal's own group (the one holding its concurrency lease,
        # if any) is decided last, so a refusal there refunds the least.
        ordered = sorted(groups.values(), key=lambda idx: any(limits[i].scope in ("key", "key+model") for i in idx))
        granted: list[tuple[list[Limit], list[int], Decision]] = []
        statuses: dict[int, LimitStatus] = {}
        for indexes in ordered:
            group_limits = [limits[i] for i in indexes]
            group_costs = [costs[i] for i in indexes]
            decision = await self._acquire_group(group_limits, group_costs, lease, dry_run=False)
            statuses.update(zip(indexes, decision.statuses, strict=True))
            if not decision.allowed:
                for done_limits, done_costs, done in granted:
                    await self._refund(done_limits, done_costs, done, lease)
                return Decision(
                    False,
                    tuple(statuses.get(i) or decision.statuses[0] for i in range(len(limits))),
                    decision.denied_by,
                    decision.retry_after,
                    costs=tuple(costs),
                )
            granted.append((group_limits, group_costs, decision))
        return Decision(True, tuple(statuses[i] for i in range(len(limits))), lease=lease, costs=tuple(costs))

    async def _refund(self, limits: list[Limit], costs: list[int], decision: Decision, lease: str | None) -> None:
        windows = [s.window for s in decision.statuses]
        await self.settle(limits, [-c for c in costs], windows)
        if lease is not None:
            await self.release(limits, lease)

    async def settle(self, limits: Sequence[Limit], deltas: Sequence[int], windows: Sequence[float]) -> None:
        chosen = [
            (lim, d, w)
            for lim, d, w in zip(limits, deltas, windows, strict=True)
            if d and lim.algorithm is not Algorithm.CONCURRENCY
        ]
        if not chosen:
            return
        if self._split:
            from redis.crc import key_slot  # only on a cluster

            groups: dict[int, list[tuple[Limit, int, float]]] = {}
            for item in chosen:
                groups.setdefault(key_slot((self.prefix + item[0].key).encode()), []).append(item)
            for group in groups.values():
                await self._settle_group(group)
        else:
            await self._settle_group(chosen)

    async def _settle_group(self, items: list[tuple[Limit, int, float]]) -> None:
        now, override = self._now()
        args: list[Any] = [override]
        for limit, delta, window in items:
            code, a, b, c, _ = params(limit, now)
            args.extend((code, delta, a, b, c, window * 1000.0))
        await self.redis.evalsha(self._settle_script, [self.prefix + item[0].key for item in items], args)

    async def release(self, limits: Sequence[Limit], lease: str) -> None:
        keys = [self.prefix + lim.key for lim in limits if lim.algorithm is Algorithm.CONCURRENCY]
        if keys:
            for key in keys if self._split else [None]:
                await self.redis.evalsha(_RELEASE_LUA, [key] if key else keys, [lease])

    async def renew(self, limits: Sequence[Limit], lease: str) -> None:
        chosen = [lim for lim in limits if lim.algorithm is Algorithm.CONCURRENCY]
        for group in [[lim] for lim in chosen] if self._split else [chosen]:
            if group:
                await self.redis.evalsha(
                    _RENEW_LUA,
                    [self.prefix + lim.key for lim in group],
                    [lease, *(lim.lease_seconds * 1000.0 for lim in group)],
                )

    async def status(self, limits: Sequence[Limit]) -> tuple[LimitStatus, ...]:
        if not self._split:
            return (await self._acquire_group(limits, [0] * len(limits), None, dry_run=True)).statuses
        result: list[LimitStatus] = []
        for limit in limits:
            result.extend((await self._acquire_group([limit], [0], None, dry_run=True)).statuses)
        return tuple(result)

    async def reset(self, limits: Sequence[Limit]) -> None:
        for limit in limits:
            await self.redis.execute("DEL", self.prefix + limit.key)

    async def aclose(self) -> None:
        await self.redis.aclose()


def _as_redis_client(client: RedisClient | Redis | RedisCluster) -> RedisClient:
    """``client``, or a redis-py client of the caller's own behind the same interface and left as
    it is (the store sends it scripts and DEL alone, whose replies redis-py does not reshape)."""
    if isinstance(client, RedisConnection):
        return client
    from ..redis._redispy import RedisPyClient  # not a RedisConnection: redis-py is in use

    if isinstance(client, RedisPyClient):
        return client
    return RedisPyClient(client, timeout=None, describe=type(client).__name__, raw_replies=False)  # type: ignore[arg-type]
