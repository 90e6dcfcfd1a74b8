"""A gateway killed with SIGKILL under load loses no ledger row of a response it completed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import redis

from ..conftest import REDIS_URL, ServerThread, cli_key, closed_port, wait_until_ready
from .test_ledger import ledger_rows


def test_sigkill_loses_no_completed_row(tmp_path: Path, mock_upstream: ServerThread, postgres_url: str) -> None:
    """Responses the clients received in full all have exactly one row, after a SIGKILL mid-load."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    config = tmp_path / "quotagate.yaml"
    config.write_text(
        f"database: {postgres_url}\n"
        f"redis: {REDIS_URL}\n"
        "tiers: {free: {}}\n"
        # A slow writer makes it likely that rows are in the stream, unwritten, at the kill.
        "ledger: {flush_seconds: 2.0, claim_after_seconds: 1.0}\n"
        "models:\n  - name: gpt-4o-mini\n"
        f"    deployments: [{{provider: openai-compatible, base_url: '{mock_upstream.url}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
    )
    env = {**os.environ, "TEST_UPSTREAM_KEY": "sk-upstream-test-key-123456"}
    os.environ.setdefault("TEST_UPSTREAM_KEY", "sk-upstream-test-key-123456")
    key = cli_key(config, env=env)
    victim_port, survivor_port = closed_port(), closed_port()
    victim = subprocess.Popen(
        [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port", str(victim_port)], env=env
    )
    survivor = subprocess.Popen(
        [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port", str(survivor_port)], env=env
    )
    prefix = "kill-" + uuid.uuid4().hex[:8]
    try:
        wait_until_ready(victim_port)
        wait_until_ready(survivor_port)

        async def load() -> list[str]:
            completed: list[str] = []
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            async with aiohttp.ClientSession() as session:

                async def worker(worker_id: int) -> None:
                    for n in range(10_000):
                        request_id = f"{prefix}-{worker_id}-{n}"
                        try:
                            async with session.post(
                                f"http://127.0.0.1:{victim_port}/v1/chat/completions",
                                json=body,
                                headers={"Authorization": f"Bearer {key}", "x-client-request-id": request_id},
                            ) as response:
                                payload = await response.json()
                                if response.status == 200 and payload["usage"]["completion_tokens"] == 4:
                                    completed.append(request_id)
                        except (TimeoutError, aiohttp.ClientError, ValueError):
                            return  # the gateway is gone

                async def killer() -> None:
                    await asyncio.sleep(1.5)
                    victim.send_signal(signal.SIGKILL)

                await asyncio.gather(killer(), *(worker(i) for i in range(8)))
            return completed

        completed = asyncio.run(load())
        assert victim.wait(10) == -signal.SIGKILL
        assert len(completed) > 50
        # The survivor's consumer takes over what the victim left in the stream.
        deadline = time.monotonic() + 20
        while True:
            rows = [r for r in ledger_rows(postgres_url) if (r.client_request_id or "").startswith(prefix)]
            if {r.client_request_id for r in rows} >= set(completed) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        ids = [r.client_request_id for r in rows]
        assert set(completed) <= set(ids), f"{len(set(completed) - set(ids))} completed responses have no row"
        assert len(ids) == len(set(ids))  # never written twice
        assert all(r.status == 200 for r in rows if r.client_request_id in set(completed))
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
