"""Several gateway processes sharing one Redis hold one limit jointly."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import redis

from ..conftest import REDIS_URL, ServerThread, cli_key, gateway_processes


def test_three_nodes_admit_exactly_the_limit(tmp_path: Path, mock_upstream: ServerThread) -> None:
    """200 concurrent requests for one key with RPM 50, spread over 3 gateways: exactly 50 pass."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    config = tmp_path / "quotagate.yaml"
    config.write_text(
        f"database: sqlite:///{tmp_path / 'keys.db'}\n"
        f"redis: {REDIS_URL}\n"
        # A sliding window holds exactly 50 over the minute, however long the burst takes.
        "tiers: {free: {rpm: 50, algorithm: sliding-window}}\n"
        "models:\n  - name: gpt-4o-mini\n"
        f"    deployments: [{{provider: openai-compatible, base_url: '{mock_upstream.url}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
    )
    env = {**os.environ, "TEST_UPSTREAM_KEY": "sk-upstream-test-key-123456"}
    key = cli_key(config, env=env)
    with gateway_processes(config, env=env) as ports:

        async def storm() -> list[int]:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

                async def one(index: int) -> int:
                    url = f"http://127.0.0.1:{ports[index % 3]}/v1/chat/completions"
                    async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
                        await response.read()
                        return response.status

                return await asyncio.gather(*(one(i) for i in range(200)))

        statuses = asyncio.run(storm())
        assert statuses.count(200) == 50
        assert statuses.count(429) == 150


def test_a_deployments_rpm_holds_across_three_nodes(tmp_path: Path, start_mock: Callable[..., ServerThread]) -> None:
    """Three gateways sharing one Redis keep a deployment under its provider limit together."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    provider = start_mock(rpm=10, rate_window=1.0)  # the provider refuses an 11th request in any second
    config = tmp_path / "quotagate.yaml"
    config.write_text(
        f"database: sqlite:///{tmp_path / 'keys.db'}\n"
        f"redis: {REDIS_URL}\n"
        "tiers: {free: {max_wait: 15}}\n"
        "models:\n  - name: gpt-4o-mini\n"
        # 540 per minute, strictly paced (burst 1, for a provider that counts a rolling second):
        # one every 1/9 s, shared by the three nodes through Redis.
        f"    deployments: [{{provider: openai-compatible, base_url: '{provider.url}/v1', rpm: 540, burst: 1}}]\n"
    )
    key = cli_key(config)
    with gateway_processes(config) as ports:

        async def offer() -> list[int]:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

                async def one(index: int) -> int:
                    await asyncio.sleep(index / 30.0)  # 30 a second, three times what the provider takes
                    url = f"http://127.0.0.1:{ports[index % 3]}/v1/chat/completions"
                    async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
                        await response.read()
                        return response.status

                return await asyncio.gather(*(one(i) for i in range(60)))

        statuses = asyncio.run(offer())
        assert provider.app.state.rate_limited == 0  # no second ever saw more than 10
        assert statuses.count(200) == provider.app.state.requests_served == 60
