"""Microseconds per limit decision, and Redis round trips per decision.

    .venv/bin/python bench/limits_decision.py [--decisions 20000] [--redis redis://127.0.0.1:6379/15]

A decision covers three limits, as a typical tier does (RPM as GCRA, TPM as a sliding window,
TPD as a calendar quota). Sequential: one decision at a time (latency). Concurrent: 64 tasks
deciding at once (throughput of one process). Round trips are counted by Redis itself
(INFO commandstats: calls of EVALSHA, EVAL and SCRIPT), divided by the number of decisions.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from redis.asyncio import Redis

from quotagate.limits import Algorithm, Calendar, InProcessStore, Limit, RedisStore, Store, Unit


def limits_for(index: int) -> list[Limit]:
    tag = f"{{k:bench{index % 1000}}}"
    return [
        Limit(f"{tag}:rpm", Unit.REQUESTS, 10**9, Algorithm.GCRA, 60.0),
        Limit(f"{tag}:tpm", Unit.TOKENS, 10**12, Algorithm.SLIDING_WINDOW, 60.0),
        Limit(f"{tag}:tpd", Unit.TOKENS, 10**12, Algorithm.CALENDAR, calendar=Calendar.DAY),
    ]


async def sequential(store: Store, n: int) -> float:
    started = time.perf_counter()
    for index in range(n):
        decision = await store.acquire(limits_for(index), [1, 500, 500])
        assert decision.allowed
    return (time.perf_counter() - started) / n * 1e6


async def concurrent(store: Store, n: int, tasks: int = 64) -> float:
    async def worker(offset: int) -> None:
        for index in range(offset, n, tasks):
            assert (await store.acquire(limits_for(index), [1, 500, 500])).allowed

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return (time.perf_counter() - started) / n * 1e6


async def script_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval", "script"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    n = args.decisions

    memory = InProcessStore()
    await sequential(memory, 1000)
    print(f"in-process  sequential  {await sequential(memory, n):7.1f} us/decision")
    print(f"in-process  concurrent  {await concurrent(memory, n):7.1f} us/decision")

    client = Redis.from_url(args.redis)
    await client.flushdb()
    redis_store = RedisStore(client)
    await sequential(redis_store, 1000)
    before = await script_calls(client)
    seq = await sequential(redis_store, n)
    con = await concurrent(redis_store, n)
    trips = (await script_calls(client) - before) / (2 * n)
    print(f"redis       sequential  {seq:7.1f} us/decision")
    print(f"redis       concurrent  {con:7.1f} us/decision")
    print(f"redis       round trips {trips:7.3f} per decision")
    await client.flushdb()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
