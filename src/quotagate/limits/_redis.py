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

The store speaks through either a redis-py client (``Redis`` or ``RedisCluster``, as a library
user may already have one) or a ``RedisConnection`` (``RedisStore.from_url``), the pipelined
connection the gateway uses on its request path, at a small fraction of redis-py's CPU cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from ._algorithms import Outcome
from ._connection import LuaScript, Packed, RedisConnection, _pack
from ._model import Algorithm, Decision, Limit, LimitStatus
from ._params import calendar_bounds, make_decision, params

if TYPE_CHECKING:
    # redis-py is imported only by those who hand the store one of its clients: a gateway talks
    # through RedisConnection alone, and saves redis-py's ~6 MiB and ~0.1 s of start-up.
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

# Encoded keys and parameters kept per limit key; beyond this many, the cache starts afresh.
_FRAGMENTS_MAX = 50_000
_PLAIN_HEAD = Packed("", "", "0")  # no lease, Redis's own clock, a real decision


def lua_script(package: str, name: str) -> str:
    """A script of ``package``'s lua/ folder, with the shared prelude (clock, fmt, windows) before it."""
    prelude = resources.files("quotagate.limits").joinpath("lua").joinpath("prelude.lua").read_text()
    return prelude + resources.files(package).joinpath("lua").joinpath(name).read_text()


ACQUIRE_LUA = lua_script("quotagate.limits", "acquire.lua")
SETTLE_LUA = lua_script("quotagate.limits", "settle.lua")
_RELEASE_LUA = "for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end return 1"
_RENEW_LUA = (
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 "
    "for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[i + 1]), ARGV[1]) "
    "redis.call('PEXPIRE', KEYS[i], math.ceil(2 * tonumber(ARGV[i + 1]))) end return 1"
)


ScriptCall = Callable[[list[str], list[Any]], Awaitable[Any]]


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


def _script(client: Redis | RedisCluster | RedisConnection, source: str) -> ScriptCall:
    """A callable running ``source`` with (keys, args), over whichever client the store has."""
    if isinstance(client, RedisConnection):
        script = LuaScript(source)

        def run(keys: list[str], args: list[Any]) -> Awaitable[Any]:
            return client.evalsha(script, keys, args)

        return run
    registered = client.register_script(source)

    def run_registered(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return registered(keys=keys, args=args)

    return run_registered


class RedisStore:
    """``RedisStore(redis_client)`` or ``RedisStore.from_url(url)``; ``clock`` only for tests that
    move time by hand."""

    def __init__(
        self,
        client: Redis | RedisCluster | RedisConnection,
        *,
        prefix: str = "qg:",
        clock: Callable[[], float] | None = None,
        split_by_slot: bool | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._clock = clock
        if split_by_slot is None:
            split_by_slot = False
            if not isinstance(client, RedisConnection):
                from redis.asyncio.cluster import RedisCluster  # the caller has redis-py loaded already

                split_by_slot = isinstance(client, RedisCluster)
        self._split = split_by_slot
        self._acquire = _script(client, ACQUIRE_LUA)
        self._connection = client if isinstance(client, RedisConnection) else None
        # The deadline the pipelined connection puts on every call itself (None: redis-py's
        # clients have their socket timeouts, and the limiter adds its own deadline).
        self.call_timeout: float | None = self._connection.timeout if self._connection is not None else None
        self._acquire_script = LuaScript(ACQUIRE_LUA)
        # limit key -> (the Limit, its encoded key, its encoded parameters, the calendar window)
        self._fragments: dict[str, tuple[Limit, Packed, Packed, object]] = {}
        # id of a tuple of limits -> (the tuple, valid until, the command's fixed head, the limits'
        # encoded parameters): see _acquire_command
        self._commands: dict[int, tuple[Sequence[Limit], float, bytes, list[bytes]]] = {}
        self._settle = _script(client, SETTLE_LUA)
        self._release = _script(client, _RELEASE_LUA)
        self._renew = _script(client, _RENEW_LUA)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.25, **kwargs: Any) -> RedisStore:
        """A store over the pipelined ``RedisConnection`` (standalone Redis); every call fails
        with TimeoutError after ``timeout`` seconds."""
        return cls(RedisConnection(url, timeout=timeout), **kwargs)

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

        All of it but the costs is the same for every request of one key and model: the policy
        hands out the same tuple of limits for them. That part is encoded once per tuple (and
        calendar window); a request encodes only its costs, where encoding the whole command
        took ~500 bytecodes.
        """
        entry = self._commands.get(id(limits))
        if entry is None or entry[0] is not limits or now >= entry[1]:
            keys, args = self._encoded_call(limits, costs, now, _PLAIN_HEAD)
            head = _pack(("EVALSHA", self._acquire_script.sha, len(keys), *keys, _PLAIN_HEAD), header=False)
            count = 3 + len(keys) + _PLAIN_HEAD.count + sum(1 + fixed.count for fixed in args[2::2])
            valid_until = min(
                (calendar_bounds(lim.calendar, lim.timezone, now)[1] for lim in limits if lim.calendar is not None),
                default=math.inf,
            )
            if len(self._commands) >= _FRAGMENTS_MAX:
                self._commands.clear()
            # The entry holds the tuple itself: its id cannot be reused while the entry lives.
            entry = self._commands[id(limits)] = (
                limits,
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
            args = [lease or "", override, "1" if dry_run else "0"]
            for limit, cost in zip(limits, costs, strict=True):
                args.append(cost)
                args.extend(params(limit, now))
            reply = await self._acquire([self.prefix + limit.key for limit in limits], args)
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
        await self._settle([self.prefix + item[0].key for item in items], args)

    async def release(self, limits: Sequence[Limit], lease: str) -> None:
        keys = [self.prefix + lim.key for lim in limits if lim.algorithm is Algorithm.CONCURRENCY]
        if keys:
            for key in keys if self._split else [None]:
                await self._release([key] if key else keys, [lease])

    async def renew(self, limits: Sequence[Limit], lease: str) -> None:
        chosen = [lim for lim in limits if lim.algorithm is Algorithm.CONCURRENCY]
        for group in [[lim] for lim in chosen] if self._split else [chosen]:
            if group:
                await self._renew(
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
            if isinstance(self.client, RedisConnection):
                await self.client.execute("DEL", self.prefix + limit.key)
            else:
                await self.client.delete(self.prefix + limit.key)

    async def aclose(self) -> None:
        await self.client.aclose()
