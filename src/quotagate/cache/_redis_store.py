"""The cache store every gateway node shares: answers in Redis, each for its own TTL.

An entry ``"<namespace>:<sha>"`` is the Redis string ``<prefix>{<tag>}:<sha>``, set with ``PX``,
where ``<tag>`` is the first 16 hex digits of the namespace's SHA-256. Hashing the namespace does
two things:

- the tag is a Redis Cluster hash tag, so one namespace's entries share a slot and a purge of
  the namespace is one script on the node that owns that slot;
- a namespace may hold any characters (it names a user): hashed, it can neither close the tag
  early (``}``) nor act as a pattern (``*``, ``?``, ``[``) in the ``SCAN MATCH`` of a purge.

The names of the namespaces that have entries are kept in one set, ``<prefix>namespaces``: on a
Cluster, SCAN sees one node at a time, and a purge of everything, or the stats, need to reach
every node that holds entries (one namespace in the set leads to its node).

Ordering keeps that set complete without a transaction across slots. A write sets its entry
before it adds its namespace's name; a purge removes the name before it deletes the entries. So
an entry that survives a purge (written after the purge's scan passed) had its name added after
the purge removed it, and stays reachable. On one server a write is one script doing both steps;
on a Cluster the two keys live in different slots, so a write is two commands, in that order
(and an entry whose name a failed second command did not add lives out its TTL unpurged).

Errors are quotagate.redis's (``ConnectionError``, ``TimeoutError``, ``RedisReplyError``), left
to the caller: the cache stage counts a failing store as a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from ..redis import LuaScript, RedisClient

# Entries one scan step visits: a step runs in Redis's one thread, so it stays short, and a purge
# of a large cache is many short steps rather than one long pause of every other client.
_SCAN_COUNT = 1000

# A write on one server: the entry, then its namespace's name, in one round trip.
_PUT = LuaScript("redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) redis.call('SADD', KEYS[2], ARGV[3]) return 1")

# One scan step of the node that owns KEYS[1]'s slot, deleting the keys that match ARGV[2]. Each
# key is deleted on its own: a purge of everything meets keys of many slots, and one DEL of keys
# in several slots is refused on a Cluster.
_SCAN_DELETE_BODY = (
    "local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])\n"
    "for _, key in ipairs(found[2]) do redis.call('DEL', key) end\n"
    "return {found[1], #found[2]}"
)
_SCAN_DELETE = LuaScript(_SCAN_DELETE_BODY)
# On a Cluster (Redis 7), a script may touch the keys of several slots of its node only when it
# says so; and it may still delete when Redis is out of memory, which is when a purge is wanted.
_SCAN_DELETE_CLUSTER = LuaScript("#!lua flags=allow-cross-slot-keys,allow-oom\n" + _SCAN_DELETE_BODY)

# One scan step of the node that owns KEYS[1]'s slot, counting the entries of each tag:
# {cursor, tag, count, tag, count, ...}. ARGV[4] is the prefix's length (the tag follows its '{').
_SCAN_COUNT_BY_TAG = LuaScript(
    "local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])\n"
    "local start = tonumber(ARGV[4]) + 2\n"
    "local counts = {}\n"
    "for _, key in ipairs(found[2]) do\n"
    "  local tag = string.sub(key, start, start + 15)\n"
    "  counts[tag] = (counts[tag] or 0) + 1\n"
    "end\n"
    "local reply = {found[1]}\n"
    "for tag, count in pairs(counts) do reply[#reply + 1] = tag reply[#reply + 1] = count end\n"
    "return reply"
)

# Which node owns KEYS[1]'s slot: on a Cluster, the namespaces that lead to the same node are
# scanned once.
_NODE_ID = LuaScript("return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')")

# Namespaces asked for their node at once, on a Cluster: a bound on concurrent calls.
_NODE_BATCH = 100


def _scan_done(cursor: Any) -> bool:
    return cursor in (b"0", "0", 0)


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a SCAN MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class RedisCacheStore:
    """``get``/``put``/``purge``/``stats`` on answers in Redis, shared by every gateway node.

    ``client`` is the gateway's, which it also closes: ``aclose`` leaves it open.
    """

    def __init__(self, client: RedisClient, prefix: str = "qg:cache:") -> None:
        self.client = client
        self.prefix = prefix
        self.namespaces_key = f"{prefix}namespaces"
        self._scan_delete_script = _SCAN_DELETE_CLUSTER if client.cluster else _SCAN_DELETE

    def tag(self, namespace: str) -> str:
        """The hash tag of ``namespace``'s entries: 16 hex digits of its SHA-256."""
        return hashlib.sha256(namespace.encode()).hexdigest()[:16]

    def redis_key(self, key: str) -> str:
        """The Redis key of the entry ``key`` (``"<namespace>:<sha>"``)."""
        namespace, _, digest = key.rpartition(":")
        return f"{self.prefix}{{{self.tag(namespace)}}}:{digest}"

    def _tag_key(self, namespace: str) -> str:
        # Any key in the namespace's slot: it routes a script to the node that holds its entries.
        return f"{self.prefix}{{{self.tag(namespace)}}}:"

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.client.execute("GET", self.redis_key(key))
        return value

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds (nothing when ``ttl`` is not positive)."""
        if ttl <= 0:
            return
        milliseconds = max(1, round(ttl * 1000))
        namespace = key.rpartition(":")[0]
        entry = self.redis_key(key)
        if not self.client.cluster:
            await self.client.evalsha(_PUT, [entry, self.namespaces_key], [value, milliseconds, namespace])
            return
        await self.client.execute("SET", entry, value, "PX", milliseconds)
        await self.client.execute("SADD", self.namespaces_key, namespace)

    async def purge(self, namespace: str | None = None) -> int:
        """Drop every entry (of ``namespace``, when given); how many were dropped."""
        if namespace is not None:
            await self.client.execute("SREM", self.namespaces_key, namespace)
            return await self._scan_delete(self._tag_key(namespace), self._pattern(self.tag(namespace)))
        names = await self._namespaces()
        if names:
            await self.client.execute("SREM", self.namespaces_key, *names)
        dropped = 0
        for route in await self._node_routes(names):
            dropped += await self._scan_delete(route, self._pattern("*"))
        return dropped

    async def stats(self) -> dict[str, int]:
        """``entries``: how many answers are stored; ``namespaces``: how many namespaces hold them."""
        names = await self._namespaces()
        counts: dict[bytes, int] = {}
        for route in await self._node_routes(names):
            cursor: Any = b"0"
            while True:
                reply = await self.client.evalsha(
                    _SCAN_COUNT_BY_TAG, [route], [cursor, self._pattern("*"), _SCAN_COUNT, len(self.prefix)]
                )
                cursor = reply[0]
                for at in range(1, len(reply), 2):
                    counts[reply[at]] = counts.get(reply[at], 0) + int(reply[at + 1])
                if _scan_done(cursor):
                    break
        return {"entries": sum(counts.values()), "namespaces": len(counts)}

    def _pattern(self, tag: str) -> str:
        return f"{_glob_escaped(self.prefix)}{{{tag}}}:*"

    async def _scan_delete(self, route: str, pattern: str) -> int:
        """Delete the keys matching ``pattern`` on the node owning ``route``'s slot, step by step."""
        dropped = 0
        cursor: Any = b"0"
        while True:
            step = [cursor, pattern, _SCAN_COUNT]
            cursor, deleted = await self.client.evalsha(self._scan_delete_script, [route], step)
            dropped += int(deleted)
            if _scan_done(cursor):
                return dropped

    async def _namespaces(self) -> list[bytes]:
        names: list[bytes] = []
        cursor: Any = b"0"
        while True:
            cursor, found = await self.client.execute("SSCAN", self.namespaces_key, cursor, "COUNT", _SCAN_COUNT)
            names.extend(found)
            if _scan_done(cursor):
                return names

    async def _node_routes(self, names: list[bytes]) -> list[str]:
        """One key per node that holds entries of ``names``: the nodes to scan. One server is one
        node; on a Cluster, each namespace's slot is asked which node owns it."""
        if not self.client.cluster:
            return [self.namespaces_key]
        routes: dict[bytes, str] = {}
        for start in range(0, len(names), _NODE_BATCH):
            batch = [self._tag_key(name.decode()) for name in names[start : start + _NODE_BATCH]]
            nodes = await asyncio.gather(*(self.client.evalsha(_NODE_ID, [route], []) for route in batch))
            for node, route in zip(nodes, batch, strict=True):
                routes.setdefault(node, route)
        return list(routes.values())
