"""`quotagate serve --workers N`: several processes on one port, sharing limits and the ledger."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import redis

from ..accounting.test_ledger import ledger_rows
from ..conftest import REDIS_URL, ServerThread, cli_key, closed_port, wait_until_ready


def write_config(tmp_path: Path, upstream: str, redis_line: str) -> Path:
    os.environ.setdefault("TEST_UPSTREAM_KEY", "sk-upstream-test-key-123456")
    config = tmp_path / "quotagate.yaml"
    config.write_text(
        f"database: sqlite:///{tmp_path / 'quotagate.db'}\n"
        + redis_line
        + "tiers: {free: {rpm: 25}}\n"
        + "ledger: {flush_seconds: 0.2}\n"
        + "models:\n  - name: gpt-4o-mini\n"
        + f"    deployments: [{{provider: openai-compatible, base_url: '{upstream}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
    )
    return config


def create_key(config: Path) -> str:
    return cli_key(config)


def worker(request_id: str) -> str:
    """The process that answered: request ids start with a random prefix per process."""
    return request_id[: len("req_") + 16]


def test_workers_share_one_port_one_limit_and_one_ledger(tmp_path: Path, mock_upstream: ServerThread) -> None:
    """Two workers answer on one port; the key's RPM holds across them exactly; every request
    has its row once the gateway is stopped with SIGTERM."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    config = write_config(tmp_path, mock_upstream.url, f"redis: {REDIS_URL}\n")
    key, other_key = create_key(config), create_key(config)
    port = closed_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port", str(port), "--workers", "2"]
    )
    try:
        wait_until_ready(port)

        async def requests(api_key: str, count: int) -> list[tuple[int, str]]:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            # One after the other, each on a new connection: whichever worker accepts it answers.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

                async def one() -> tuple[int, str]:
                    async with session.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {api_key}"},
                    ) as response:
                        await response.read()
                        return response.status, response.headers["x-request-id"]

                return [await one() for _ in range(count)]

        # Until both workers answer (the second may still be starting), with another key.
        deadline = time.monotonic() + 60
        while len({worker(request_id) for _, request_id in asyncio.run(requests(other_key, 10))}) < 2:
            assert time.monotonic() < deadline, "the second worker never answered"

        answers = asyncio.run(requests(key, 60))
        statuses = collections.Counter(status for status, _ in answers)
        assert statuses == {200: 25, 429: 35}
        # Both workers answered, and between them admitted exactly the key's 25 per minute.
        assert len({worker(request_id) for _, request_id in answers}) == 2
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
    rows = {row.request_id: row for row in ledger_rows(f"sqlite:///{tmp_path / 'quotagate.db'}")}
    assert collections.Counter(rows[request_id].status for _, request_id in answers) == {200: 25, 429: 35}
    # No worker outlived the parent.
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", str(config)], capture_output=True, text=True).stdout.split()
    assert [pid for pid in left if int(pid) != os.getpid()] == []


def test_workers_without_redis_are_refused(tmp_path: Path, mock_upstream: ServerThread) -> None:
    """In-process limits would be per worker, so several workers need Redis: said, not served."""
    config = write_config(tmp_path, mock_upstream.url, "")
    refused = subprocess.run(
        [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port", str(closed_port()), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "--workers 2 needs `redis:`" in refused.stderr + refused.stdout
