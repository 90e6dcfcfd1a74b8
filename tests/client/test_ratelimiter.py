"""The plain limiter for any API: context managers, decorator, remaining, batches."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from quotagate.client import RateLimiter, RateLimitTimeout, RequestTooLarge, run_batch, run_batch_sync

from ..conftest import REDIS_URL, ServerThread


async def test_async_and_sync_forms_share_the_limit() -> None:
    """`async with`, `with` and the decorator draw on the same limits."""
    limiter = RateLimiter(rpm=3, burst=3, max_wait=0)
    async with limiter.acquire():
        pass
    await asyncio.to_thread(lambda: limiter.acquire().__enter__())

    @limiter.limit()
    async def call() -> str:
        return "ok"

    assert await call() == "ok"
    with pytest.raises(RateLimitTimeout):
        await call()
    remaining = await limiter.aremaining()
    assert [(r.name, r.limit, r.used, r.remaining) for r in remaining] == [("RPM", 3, 3, 0)]


async def test_remaining_reports_the_configured_limit_and_its_burst() -> None:
    """rpm=500 reports a limit of 500 (not 1) and lets one second's share, 9, start at once."""
    limiter = RateLimiter(rpm=500, max_wait=0)
    [idle] = await limiter.aremaining()
    assert (idle.limit, idle.burst, idle.used, idle.remaining) == (500, 9, 0, 9)
    for _ in range(9):
        async with limiter.acquire():
            pass
    with pytest.raises(RateLimitTimeout):
        async with limiter.acquire():
            pass
    [busy] = await limiter.aremaining()
    assert (busy.limit, busy.used, busy.remaining) == (500, 9, 0)


def test_sync_decorator_tokens_and_settle() -> None:
    """A sync function limited by tokens; settle corrects the estimate; too big never fits."""
    limiter = RateLimiter(tpm=1000, max_wait=0)

    @limiter.limit(tokens=lambda n: n)
    def work(n: int) -> int:
        return n

    assert work(300) == 300
    with limiter.acquire(tokens=400) as permit:
        permit.settle(tokens=100)
    assert limiter.remaining()[0].used == 400
    with pytest.raises(RequestTooLarge):
        work(1001)


async def test_batch_keeps_order_and_errors() -> None:
    """Results come back in input order; a failing item keeps its error and the rest go on."""
    limiter = RateLimiter(rps=50, max_wait=10)

    async def call(n: int) -> int:
        async with limiter.acquire():
            await asyncio.sleep(0.01 * (n % 3))
            if n == 4:
                raise ValueError("four")
            return n * n

    results = await run_batch(range(8), call, concurrency=3, progress=False)
    assert [r.index for r in results] == list(range(8))
    assert [r.value for r in results if r.ok] == [0, 1, 4, 9, 25, 36, 49]
    assert isinstance(results[4].error, ValueError)


def test_sync_batch_with_progress(capsys: pytest.CaptureFixture[str]) -> None:
    """The sync batch runs on threads and can show a progress bar."""
    results = run_batch_sync(["a", "bb", "ccc"], len, concurrency=2, progress=True)
    assert [r.value for r in results] == [1, 2, 3]
    assert "3/3" in capsys.readouterr().err


WORKER = """
import sys, time, httpx
from quotagate.client import RateLimiter
url, store, start, stop = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
limiter = RateLimiter(rps=10, store=store, name="shared-test", max_wait=10)
time.sleep(max(0, start - time.time()))
sent = 0
while True:
    with limiter.acquire():
        if time.time() >= stop:
            break
        httpx.post(url, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
        sent += 1
print(sent)
"""


def test_four_processes_share_one_limit(start_mock: Callable[..., ServerThread], tmp_path: Path) -> None:
    """4 processes on the real Redis together stay under one 10-per-second limit."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    mock = start_mock()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    start = time.time() + 2.0  # after every interpreter is up
    stop = start + 3.0
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                mock.url + "/v1/chat/completions",
                REDIS_URL,
                str(start),
                str(stop),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(4)
    ]
    counts = [int(worker.communicate(timeout=60)[0].strip()) for worker in workers]
    total = sum(counts)
    assert total == mock.app.state.requests_served
    assert 25 <= total <= 31, counts  # 3 s at 10/s, paced, shared by all four
    assert all(count > 0 for count in counts)
    assert httpx.get(mock.url + "/health").status_code == 200
