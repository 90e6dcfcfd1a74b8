"""Gateways of a user's configuration on a Redis topology of the test's own, and what their
clients saw: shared by the Cluster and Sentinel scenarios."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from ..accounting.test_ledger_faults import Gateway
from ..conftest import MASTER_KEY, cli_key, closed_port
from ..server.test_database_outage import UPSTREAM_KEY, Answer, Load, ask

__all__ = ["Answer", "Load", "ask", "burst", "gateways_on", "ready", "run_load_on"]


def gateways_on(
    tmp_path: Path, database: str, upstream: str, redis: str, nodes: int = 2, extra: str = ""
) -> list[Gateway]:
    """``nodes`` ``quotagate serve`` processes (not started) on one configuration and database,
    all using the first one's key. The free tier: 40 requests a minute per key (a sliding window,
    exact over the minute); ``house-model``: 30 requests a minute in all, whoever asks."""
    config = tmp_path / "quotagate.yaml"
    config.write_text(
        f"database: {database}\n"
        f"redis: '{redis}'\n"
        "master_key: env:TEST_MASTER_KEY\n"
        "tiers: {free: {rpm: 40, algorithm: sliding-window}}\n"
        "limits:\n"
        "  - {scope: model, unit: requests, amount: 30, per: minute, algorithm: sliding-window, "
        "match: {model: [house-model]}}\n"
        "models:\n"
        "  - name: gpt-4o-mini\n"
        f"    deployments: [{{provider: openai-compatible, base_url: '{upstream}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
        "  - name: house-model\n"
        f"    deployments: [{{provider: openai-compatible, base_url: '{upstream}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
        + extra
    )
    env = {
        **os.environ,
        "TEST_UPSTREAM_KEY": UPSTREAM_KEY,
        "TEST_MASTER_KEY": MASTER_KEY,
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    key = cli_key(config, env=env)
    return [Gateway(config, closed_port(), env, key) for _ in range(nodes)]


async def burst(ports: list[int], key: str, count: int, load: Load, model: str = "gpt-4o-mini", tag: str = "a") -> None:
    """``count`` requests at once, spread over the gateways at ``ports``; ``tag`` tells bursts of one load apart."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        answers = await asyncio.gather(
            *(ask(session, ports[i % len(ports)], key, f"{load.prefix}-{tag}-{i}", body=body) for i in range(count))
        )
    load.answers.extend(answers)


async def run_load_on(ports: list[int], key: str, load: Load, stop: asyncio.Event, workers: int = 8) -> None:
    """``workers`` clients, each sending one request after another to one of the gateways, until ``stop``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def worker(worker_id: int) -> None:
            port = ports[worker_id % len(ports)]
            for n in range(1_000_000):
                if stop.is_set():
                    return
                load.answers.append(await ask(session, port, key, f"{load.prefix}-{worker_id}-{n}"))

        await asyncio.gather(*(worker(i) for i in range(workers)))


async def ready(port: int) -> tuple[int, dict[str, Any], float]:
    """GET /ready: the status, the body, and the seconds it took."""
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
        session.get(f"http://127.0.0.1:{port}/ready") as response,
    ):
        return response.status, await response.json(content_type=None), time.monotonic() - started
