"""A Redis of the test's own killed under concurrent load through the gateway, in both fail modes."""

from __future__ import annotations

import asyncio
import collections
import logging
import subprocess
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from ..conftest import RunningGateway, ServerThread, gateway_config
from .conftest import start_redis, wait_for_redis

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def _load(url: str, key: str, stop: asyncio.Event, statuses: list[tuple[float, int, str]]) -> None:
    """One client sending requests back to back until ``stop``: (time, status, error code) each."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while not stop.is_set():
            async with session.post(url + "/v1/chat/completions", json=CHAT, headers=headers) as response:
                body: Any = await response.json(content_type=None)
                code = (body.get("error") or {}).get("code") or "" if isinstance(body, dict) else ""
                statuses.append((time.monotonic(), response.status, code))


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_a_killed_redis_under_load_answers_no_500_and_recovers(
    mode: str,
    own_redis: tuple[int, list[subprocess.Popen[bytes]]],
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Concurrent requests while Redis dies and returns: no 5xx but fail-closed's 503
    limit_store_unavailable (none at all failing open), a few warning lines rather than one
    per request, and 200s again once Redis is back."""
    port, procs = own_redis
    await wait_for_redis(port)
    config = gateway_config(
        sqlite_url,
        mock_upstream.url,
        redis=f"redis://127.0.0.1:{port}/0",
        tiers={"free": {"rpm": 1_000_000}},
        limiter={"on_store_failure": mode},
    )
    gw = await asyncio.to_thread(start_gateway, config)
    key = (await asyncio.to_thread(gw.create_key))["key"]
    statuses: list[tuple[float, int, str]] = []
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="quotagate")
    clients = [asyncio.ensure_future(_load(gw.url, key, stop, statuses)) for _ in range(24)]
    await asyncio.sleep(0.5)
    procs[0].kill()
    procs[0].wait()
    await asyncio.sleep(2.5)
    outage = len(statuses)
    procs.append(start_redis(port))
    await wait_for_redis(port)
    back = time.monotonic()
    await asyncio.sleep(2.5)
    stop.set()
    await asyncio.gather(*clients)

    counts = collections.Counter((status, code) for _, status, code in statuses)
    allowed = {(200, "")} | ({(503, "limit_store_unavailable")} if mode == "closed" else set())
    assert set(counts) <= allowed, counts
    assert outage > 200, counts  # the load really ran through the outage
    # Redis has been back for a second: everything is served again.
    assert [status for at, status, _ in statuses if at > back + 1.0] and all(
        status == 200 for at, status, _ in statuses if at > back + 1.0
    )
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) < 40, collections.Counter(r.getMessage()[:60] for r in warnings)
