"""Open-loop load at a fixed rate, in its own process: latency percentiles and stream TTFT.

    python bench/loadgen.py URL --rate 500 --seconds 10 [--key K] [--stream] [--model M]

Requests start on schedule whether or not earlier ones finished (an open loop), so a slow
server shows up as latency, not as a politely lowered rate. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
from _common import pct


async def run(url: str, rate: float, seconds: float, key: str | None, stream: bool, model: str) -> dict[str, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in three words."}],
        "max_tokens": 16,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    if stream:
                        await response.content.readany()  # the first bytes of the stream
                        ttfts.append((time.perf_counter() - started) * 1000)
                        await response.read()
                    else:
                        await response.read()
                    if response.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)

        tasks = []
        start = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "requests": total,
        "errors": errors,
        "achieved_rps": len(latencies) / elapsed,
        "p50": pct(latencies, 0.50),
        "p90": pct(latencies, 0.90),
        "p99": pct(latencies, 0.99),
        "ttft_p50": pct(ttfts, 0.50),
        "ttft_p99": pct(ttfts, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--key")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.url, args.rate, args.seconds, args.key, args.stream, args.model))))


if __name__ == "__main__":
    main()
