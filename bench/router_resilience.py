"""How the gateway absorbs upstream failures: success rate, p99, and provider 429s it causes.

    .venv/bin/python bench/router_resilience.py [--quick]

Three scenarios, each with its own mock providers and a gateway (separate processes), driven by
an async load generator in this process:
  failing-50   two deployments, one answering 500 to half its requests; 1,500 requests, 32 at once
  storm-30s    two deployments, one answering 429 (Retry-After 1) for its first 30 s; 40 s at 40/s
  offered-3x   one deployment with RPM 300 whose mock enforces exactly 300 per 60 s; offered
               15/s (3x) for 60 s; requests may wait 5 s: how many 429s did the provider send?
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from _common import free_port, pct, wait_ready

QG = [sys.executable, "-m", "quotagate"]
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


class Scenario:
    def __init__(self, name: str, mocks: list[list[str]], deployments: list[str], tier: str = "{}") -> None:
        self.name = name
        self.work = Path(tempfile.mkdtemp(prefix=f"qg-{name}-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mock_ports = []
        for args in mocks:
            p = free_port()
            self.procs.append(
                subprocess.Popen([*QG, "mock-upstream", "--port", str(p), *args], stderr=subprocess.DEVNULL)
            )
            self.mock_ports.append(p)
        for p in self.mock_ports:
            wait_ready(f"http://127.0.0.1:{p}/health")
        deps = ", ".join(d.format(*[f"http://127.0.0.1:{p}/v1" for p in self.mock_ports]) for d in deployments)
        config = self.work / "quotagate.yaml"
        config.write_text(
            f"database: sqlite:///{self.work}/db.sqlite\n"
            f"tiers: {{bench: {tier}}}\n"
            f"models:\n  - name: gpt-4o-mini\n    deployments: [{deps}]\n"
        )
        self.key = (
            subprocess.run(
                [*QG, "keys", "create", "--user", "b", "--tier", "bench", "-c", str(config)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        self.gw_port = free_port()
        self.procs.append(subprocess.Popen([*QG, "serve", "-c", str(config), "--port", str(self.gw_port)]))
        wait_ready(f"http://127.0.0.1:{self.gw_port}/health")

    def mock_health(self, index: int) -> dict[str, int]:
        return httpx.get(f"http://127.0.0.1:{self.mock_ports[index]}/health").json()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


async def drive(
    url: str,
    key: str,
    *,
    total: int | None = None,
    concurrency: int = 32,
    rate: float | None = None,
    seconds: float = 0,
) -> tuple[list[int], list[float]]:
    statuses: list[int] = []
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            started = time.perf_counter()
            try:
                async with session.post(url, json=BODY, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as r:
                    await r.read()
                    statuses.append(r.status)
            except (aiohttp.ClientError, TimeoutError):
                statuses.append(0)
            latencies.append((time.perf_counter() - started) * 1000)

        if rate is None:
            assert total is not None
            gate = asyncio.Semaphore(concurrency)

            async def gated() -> None:
                async with gate:
                    await one()

            await asyncio.gather(*(gated() for _ in range(total)))
        else:
            tasks = []
            start = time.perf_counter()
            for i in range(int(rate * seconds)):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one()))
            await asyncio.gather(*tasks)
    return statuses, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs (for a smoke test)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    rows = []

    s = Scenario(
        "failing-50",
        [["--rate-500", "0.5", "--seed", "1"], []],
        [
            "{{provider: openai-compatible, base_url: '{0}'}}",
            "{{provider: openai-compatible, base_url: '{1}'}}",
        ],
    )
    try:
        statuses, lat = asyncio.run(
            drive(f"http://127.0.0.1:{s.gw_port}/v1/chat/completions", s.key, total=int(1500 * scale))
        )
        rows.append(
            (
                "two deployments, one failing 50 %",
                statuses,
                lat,
                f"bad one saw {s.mock_health(0)['requests_served']} requests",
            )
        )
    finally:
        s.stop()

    storm = 30 * scale
    s = Scenario(
        "storm",
        [["--storm-seconds", str(storm), "--retry-after", "1"], []],
        [
            "{{provider: openai-compatible, base_url: '{0}', priority: 0}}",
            "{{provider: openai-compatible, base_url: '{1}', priority: 1}}",
        ],
    )
    try:
        statuses, lat = asyncio.run(
            drive(
                f"http://127.0.0.1:{s.gw_port}/v1/chat/completions",
                s.key,
                rate=40,
                seconds=storm + 10 * scale,
            )
        )
        rows.append(
            (
                f"one deployment answering 429 for {storm:g} s",
                statuses,
                lat,
                f"storming one saw {s.mock_health(0)['requests_served']} requests",
            )
        )
    finally:
        s.stop()

    seconds = 60 * scale
    s = Scenario(
        "offered-3x",
        [["--rpm", "300", "--rate-window", "60"]],
        ["{{provider: openai-compatible, base_url: '{0}', rpm: 300}}"],
        tier="{max_wait: 5}",
    )
    try:
        statuses, lat = asyncio.run(
            drive(f"http://127.0.0.1:{s.gw_port}/v1/chat/completions", s.key, rate=15, seconds=seconds)
        )
        health = s.mock_health(0)
        rows.append(
            (
                f"offered 3x a deployment's RPM 300 for {seconds:g} s",
                statuses,
                lat,
                f"provider 429s caused: {health['rate_limited']}; provider served {health['requests_served']}",
            )
        )
    finally:
        s.stop()

    print(f"\n{'scenario':<48} {'requests':>8} {'success':>8} {'p99 ms':>9}  notes")
    for name, statuses, lat, note in rows:
        ok = statuses.count(200) / len(statuses) * 100
        counts = dict(sorted((code, statuses.count(code)) for code in set(statuses)))
        print(f"{name:<48} {len(statuses):>8} {ok:>7.2f}% {pct(lat, 0.99):>9.1f}  {note}; statuses {counts}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
