"""Microseconds per limit decision, and Redis round trips per decision.

    .venv/bin/python bench/limits_decision.py [--decisions 20000] [--redis redis://127.0.0.1:6379/15]

A decision covers three limits, as a typical tier does (RPM as GCRA, TPM as a sliding window,
TPD as a calendar quota), for one of 1,000 keys whose Limit objects are built once (as the
gateway's policy caches them). Sequential: one decision at a time (latency). Concurrent: 64
tasks deciding at once (throughput of one process). Wall: elapsed time per decision. CPU: this
process's CPU time per decision (the Redis server's own time is not in it). Stores: in-process,
Redis through redis-py (a library user's own client) and through the pipelined connection the
gateway uses (RedisStore.from_url). Round trips are counted by Redis itself (INFO commandstats:
calls of EVALSHA, EVAL and SCRIPT), divided by the number of decisions.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from functools import cache

from redis.asyncio import Redis

from quotagate.limits import Algorithm, Calendar, InProcessStore, Limit, RedisStore, Store, Unit


def limits_for(index: int) -> list[Limit]:
    return _limits_of_key(index % 1000)


@cache
def _limits_of_key(key: int) -> list[Limit]:
    tag = f"{{k:bench{key}}}"
    return [
        Limit(f"{tag}:rpm", Unit.REQUESTS, 10**9, Algorithm.GCRA, 60.0),
        Limit(f"{tag}:tpm", Unit.TOKENS, 10**12, Algorithm.SLIDING_WINDOW, 60.0),
        Limit(f"{tag}:tpd", Unit.TOKENS, 10**12, Algorithm.CALENDAR, calendar=Calendar.DAY),
    ]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sequential(store: Store, n: int) -> tuple[float, float]:
    """(wall, CPU) microseconds per decision, one at a time."""
    cpu, started = _cpu(), time.perf_counter()
    for index in range(n):
        decision = await store.acquire(limits_for(index), [1, 500, 500])
        assert decision.allowed
    return (time.perf_counter() - started) / n * 1e6, (_cpu() - cpu) / n * 1e6


async def concurrent(store: Store, n: int, tasks: int = 64) -> tuple[float, float]:
    """(wall, CPU) microseconds per decision, with 64 tasks deciding at once."""

    async def worker(offset: int) -> None:
        for index in range(offset, n, tasks):
            assert (await store.acquire(limits_for(index), [1, 500, 500])).allowed

    cpu, started = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return (time.perf_counter() - started) / n * 1e6, (_cpu() - cpu) / n * 1e6


async def script_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval", "script"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    n = args.decisions
    print(f"{'store':<28} {'mode':<11} {'wall us':>8} {'CPU us':>8}")

    memory = InProcessStore()
    await sequential(memory, 1000)
    for mode, run in (("sequential", sequential), ("concurrent", concurrent)):
        wall, cpu = await run(memory, n)
        print(f"{'in-process':<28} {mode:<11} {wall:8.1f} {cpu:8.1f}")

    client = Redis.from_url(args.redis)
    await client.flushdb()
    for name, redis_store in (
        ("redis (redis-py client)", RedisStore(client)),
        ("redis (pipelined, gateway)", RedisStore.from_url(args.redis)),
    ):
        await sequential(redis_store, 1000)
        before = await script_calls(client)
        for mode, run in (("sequential", sequential), ("concurrent", concurrent)):
            wall, cpu = await run(redis_store, n)
            print(f"{name:<28} {mode:<11} {wall:8.1f} {cpu:8.1f}")
        trips = (await script_calls(client) - before) / (2 * n)
        print(f"{name:<28} round trips per decision: {trips:.3f}")
        if redis_store.client is not client:
            await redis_store.aclose()
    await client.flushdb()
    await client.aclose()


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main())
