"""Deployments' provider limits as users configure them: paced, waited for, never refused early.

A provider's RPM/TPM is the gateway's business: a request that its tenant's limits admitted waits
for deployment capacity (whichever of the model's deployments frees first) instead of getting a
429 the provider would not have sent. Measured at the mock providers, which enforce the limits
themselves and record when each request arrived.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis
from openai import AsyncOpenAI

from quotagate.config import parse_config

from ..conftest import REDIS_URL, RunningGateway, ServerThread, cli_key, closed_port, wait_until_ready

# A database of its own: other tests flush theirs while these run for half a minute.
SCENARIO_REDIS = REDIS_URL.rsplit("/", 1)[0] + "/13"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def _deployment(mock: ServerThread, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai-compatible", "base_url": mock.url + "/v1", "api_key": "env:TEST_UPSTREAM_KEY", **extra}


def _gateway(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, deployments: list[dict[str, Any]]
) -> tuple[RunningGateway, str]:
    config = parse_config(
        {
            "database": sqlite_url,
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {"rpm": 6000}},  # the tenant's limits admit everything; no max_wait
            "models": [{"name": "gpt-4o-mini", "deployments": deployments}],
        }
    )
    gw = start_gateway(config)
    return gw, str(gw.create_key(tier="free")["key"])


async def _at_once(url: str, key: str, count: int) -> list[int]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> int:
            async with session.post(url, json=CHAT, headers={"Authorization": f"Bearer {key}"}) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one() for _ in range(count)))


def test_ten_at_once_within_a_deployments_rpm_are_all_served(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """rpm 500, tpm 200000, a tier without max_wait: 10 simultaneous requests are all served (was 1 of 10)."""
    mock = start_mock(rpm=500)
    gw, key = _gateway(start_gateway, sqlite_url, [_deployment(mock, rpm=500, tpm=200_000)])
    statuses = asyncio.run(_at_once(gw.v1 + "/chat/completions", key, 10))
    assert statuses == [200] * 10
    assert mock.app.state.rate_limited == 0


@pytest.mark.parametrize(("rpm", "tpm"), [(60_001, None), (1_000_000, 10_000_000)])
def test_any_limit_a_provider_sells_works(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    rpm: int,
    tpm: int | None,
) -> None:
    """An rpm above 60,000 (under 1 ms per request) serves; 20 concurrent SDK calls at 1,000,000 RPM all pass."""
    mock = start_mock()
    gw, key = _gateway(start_gateway, sqlite_url, [_deployment(mock, rpm=rpm, tpm=tpm)])

    async def sdk_calls() -> list[str]:
        client = AsyncOpenAI(base_url=gw.v1, api_key=key, max_retries=0)
        replies = await asyncio.gather(
            *(client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"]) for _ in range(20))
        )
        await client.close()
        return [r.choices[0].finish_reason for r in replies]

    assert asyncio.run(sdk_calls()) == ["stop"] * 20
    assert mock.app.state.requests_served == 20


def test_a_waiting_request_takes_whichever_deployment_frees_first(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Two deployments paced 1 per 2 s and 1 per 0.5 s: 8 requests at once are all served, by both, in about 2 s."""
    slow, fast = start_mock(rpm=30), start_mock(rpm=120)
    gw, key = _gateway(
        start_gateway,
        sqlite_url,
        [_deployment(slow, rpm=30, priority=0), _deployment(fast, rpm=120, burst=1, priority=0)],
    )
    started = time.monotonic()
    statuses = asyncio.run(_at_once(gw.v1 + "/chat/completions", key, 8))
    assert statuses == [200] * 8
    # 1 + 7: the slow one serves once, the fast one every 0.5 s (a line stuck behind the slow
    # one would take 14 s, and one that never moved would end in 429s).
    assert slow.app.state.requests_served >= 1 and fast.app.state.requests_served >= 6
    assert time.monotonic() - started < 5.0
    assert slow.app.state.rate_limited == fast.app.state.rate_limited == 0


def test_past_the_queue_wait_the_429_names_an_honest_retry(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """Capacity not back within router.max_queue_wait: a 429 at once, whose Retry-After the deployment bears out."""
    mock = start_mock()
    config = parse_config(
        {
            "database": sqlite_url,
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {}},
            "router": {"max_queue_wait": 0.5},
            "models": [{"name": "gpt-4o-mini", "deployments": [_deployment(mock, rpm=20)]}],  # one per 3 s
        }
    )
    gw = start_gateway(config)
    key = str(gw.create_key(tier="free")["key"])
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=headers).status_code == 200
    started = time.monotonic()
    refused = httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=headers)
    assert refused.status_code == 429 and time.monotonic() - started < 0.4  # no wait that could not end well
    assert "provider limits" in refused.json()["error"]["message"]
    retry = int(refused.headers["retry-after"])
    assert 2 <= retry <= 3
    time.sleep(retry)
    assert httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=headers).status_code == 200


# -- several gateway nodes on Redis, as the provider sees them ----------------------------------


def _max_in_any_window(arrivals: Sequence[float], seconds: float) -> int:
    times = sorted(arrivals)
    return max((bisect.bisect_left(times, t + seconds) - i for i, t in enumerate(times)), default=0)


def _longest_gap(arrivals: Sequence[float]) -> float:
    times = sorted(arrivals)
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class Nodes:
    """Three `quotagate serve` processes on one configuration and one Redis."""

    def __init__(self, tmp_path: Path, config_text: str) -> None:
        redis.Redis.from_url(SCENARIO_REDIS).flushdb()
        config = tmp_path / "quotagate.yaml"
        config.write_text(f"database: sqlite:///{tmp_path / 'keys.db'}\nredis: {SCENARIO_REDIS}\n" + config_text)
        self.env = {**os.environ, "TEST_UPSTREAM_KEY": "sk-upstream-test-key-123456"}
        self.key = cli_key(config, env=self.env)
        self.ports = [closed_port() for _ in range(3)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port", str(port)], env=self.env
            )
            for port in self.ports
        ]
        for port in self.ports:
            wait_until_ready(port)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(15)

    async def offer(self, delays: Sequence[float], concurrency: int = 1000) -> list[tuple[int, str]]:
        """One request at each delay (seconds from now), to the nodes in turn; (status, Retry-After)."""
        gate = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(index: int, delay: float) -> tuple[int, str]:
                await asyncio.sleep(delay)
                async with gate:
                    url = f"http://127.0.0.1:{self.ports[index % 3]}/v1/chat/completions"
                    headers = {"Authorization": f"Bearer {self.key}"}
                    async with session.post(url, json=CHAT, headers=headers) as response:
                        await response.read()
                        return response.status, response.headers.get("retry-after", "")

            return await asyncio.gather(*(one(i, d) for i, d in enumerate(delays)))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[str], Nodes]]:
    started: list[Nodes] = []

    def start(config_text: str) -> Nodes:
        started.append(Nodes(tmp_path, config_text))
        return started[-1]

    yield start
    for group in started:
        group.stop()


def _two_deployments(a: ServerThread, b: ServerThread, rpm: int, tier: str, router: str = "") -> str:
    deployments = ", ".join(
        f"{{provider: openai-compatible, base_url: '{m.url}/v1', api_key: env:TEST_UPSTREAM_KEY, rpm: {rpm}}}"
        for m in (a, b)
    )
    return f"tiers: {{free: {tier}}}\n{router}models:\n  - name: gpt-4o-mini\n    deployments: [{deployments}]\n"


def test_three_nodes_pace_an_even_load_over_two_deployments(
    nodes: Callable[[str], Nodes], start_mock: Callable[..., ServerThread]
) -> None:
    """200 requests at an even 20/s over 3 nodes, two deployments at rpm 600: no 429 anywhere, each within its per-second share plus burst, split evenly."""
    # The providers enforce their RPM themselves: a request past 600 in a rolling minute is a 429.
    a, b = start_mock(rpm=600), start_mock(rpm=600)
    group = nodes(_two_deployments(a, b, 600, "{rpm: 6000}"))
    results = asyncio.run(group.offer([i / 20 for i in range(200)], concurrency=64))
    assert [status for status, _ in results] == [200] * 200
    served = [a.app.state.requests_served, b.app.state.requests_served]
    assert sum(served) == 200 and a.app.state.rate_limited == b.app.state.rate_limited == 0
    for mock in (a, b):
        arrivals = list(mock.app.state.arrivals)
        # One second's share, plus the burst. (No 60 s window over 600 is the mock's own rule,
        # rate_limited above; tests/limits/test_stores.py holds the pace to it for 3 minutes.)
        assert _max_in_any_window(arrivals, 1.0) <= 10 + 10
    assert abs(served[0] - served[1]) <= 0.1 * sum(served) / 2, served


def test_a_burst_keeps_both_deployments_busy_while_requests_wait(
    nodes: Callable[[str], Nodes], start_mock: Callable[..., ServerThread]
) -> None:
    """60 requests within 1 s, 3 nodes, two deployments at rpm 30, tier max_wait 30: both serve every 2 s throughout; the rest get an honest 429."""
    a, b = start_mock(rpm=30), start_mock(rpm=30)
    group = nodes(_two_deployments(a, b, 30, "{rpm: 6000, max_wait: 30}"))
    started = time.monotonic()
    results = asyncio.run(group.offer([i / 60 for i in range(60)]))
    elapsed = time.monotonic() - started
    statuses = [status for status, _ in results]
    assert a.app.state.rate_limited == b.app.state.rate_limited == 0  # nothing past either provider's RPM
    assert statuses.count(200) == a.app.state.requests_served + b.app.state.requests_served
    # Each deployment admits one request every 2 s (rpm 30, paced): over the 30 s wait, 15 or 16
    # each. Before, 17 were served in all while one deployment sat idle.
    for mock in (a, b):
        arrivals = list(mock.app.state.arrivals)
        assert len(arrivals) >= 14
        assert _longest_gap(arrivals) < 3.0  # never idle while requests waited
    assert set(statuses) == {200, 429}
    assert all(int(retry) >= 1 for status, retry in results if status == 429)
    assert elapsed < 40
