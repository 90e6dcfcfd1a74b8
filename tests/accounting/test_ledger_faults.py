"""No acknowledged ledger row is lost, and no request waits on Redis past the store's timeout,
when the gateway is killed, or its Redis restarts empty or freezes (issue 18, defects 6 and 8).

Each test runs a real ``quotagate serve`` process under load; the Redis ones a redis-server of
their own, without persistence, that they kill, restart, stop and continue.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from ..conftest import ServerThread, cli_key, closed_port, wait_until_ready
from ..limits.conftest import start_redis, wait_for_redis
from .test_ledger import ledger_rows

UPSTREAM_KEY = "sk-upstream-test-key-123456"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@dataclass
class Load:
    """What the clients saw: the ids of the requests answered 200 in full, and when each ended."""

    prefix: str = field(default_factory=lambda: "fault-" + uuid.uuid4().hex[:8])
    completed: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (ended, seconds)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)  # what ended each client that could not go on


@dataclass
class Gateway:
    config: Path
    port: int
    env: dict[str, str]
    key: str = ""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "quotagate", "serve", "-c", str(self.config), "--port", str(self.port)]
        self.process = subprocess.Popen(command, env=self.env)
        wait_until_ready(self.port)

    async def load(self, load: Load, stop: asyncio.Event, workers: int = 8) -> None:
        """Requests from ``workers`` clients, one after another each, until ``stop`` or the gateway is gone."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def worker(worker_id: int) -> None:
                for n in range(1_000_000):
                    if stop.is_set():
                        return
                    request_id = f"{load.prefix}-{worker_id}-{n}"
                    started = time.monotonic()
                    try:
                        async with session.post(
                            f"http://127.0.0.1:{self.port}/v1/chat/completions",
                            json=BODY,
                            headers={"Authorization": f"Bearer {self.key}", "x-client-request-id": request_id},
                        ) as response:
                            payload = await response.json()
                            ended = time.monotonic()
                            load.latencies.append((ended, ended - started))
                            load.statuses[response.status] += 1
                            if response.status == 200 and payload["usage"]["completion_tokens"] == 4:
                                load.completed.append(request_id)
                    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                        load.errors.append(f"{type(exc).__name__}: {exc}")
                        return  # the gateway is gone

            await asyncio.gather(*(worker(i) for i in range(workers)))


@pytest.fixture
def make_gateway(tmp_path: Path, mock_upstream: ServerThread) -> Iterator[type[Gateway]]:
    """A gateway process on SQLite (and ``redis`` when given), with a key; stopped afterwards."""
    started: list[Gateway] = []

    class Made(Gateway):
        def __init__(self, redis: str | None = None, extra: str = "") -> None:
            config = tmp_path / "quotagate.yaml"
            config.write_text(
                f"database: sqlite:///{tmp_path / 'quotagate.db'}\n"
                + (f"redis: {redis}\n" if redis else "")
                + "tiers: {free: {}}\n"
                + extra
                + "models:\n  - name: gpt-4o-mini\n"
                f"    deployments: [{{provider: openai-compatible, base_url: '{mock_upstream.url}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
            )
            env = {**os.environ, "TEST_UPSTREAM_KEY": UPSTREAM_KEY}
            super().__init__(config, closed_port(), env)
            self.key = cli_key(config, env=env)
            started.append(self)

    yield Made
    for gateway in started:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait(10)


def rows_for(tmp_path: Path, load: Load) -> list[str]:
    """The client request ids of the load's rows in the ledger."""
    rows = ledger_rows(f"sqlite:///{tmp_path / 'quotagate.db'}")
    return [r.client_request_id for r in rows if (r.client_request_id or "").startswith(load.prefix)]


def wait_for_all(tmp_path: Path, load: Load, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        ids = rows_for(tmp_path, load)
        if set(load.completed) <= set(ids) or time.monotonic() > deadline:
            return ids
        time.sleep(0.25)


def test_sigkill_without_redis_loses_no_acknowledged_row(tmp_path: Path, make_gateway: type[Gateway]) -> None:
    """Embedded mode (SQLite, no Redis): every response a client received in full has its row,
    once, after the gateway is killed with SIGKILL under load and started again."""
    gateway = make_gateway()
    gateway.start()
    assert gateway.process is not None
    load, stop = Load(), asyncio.Event()

    async def run() -> None:
        async def killer() -> None:
            await asyncio.sleep(1.5)
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGKILL)

        await asyncio.gather(killer(), gateway.load(load, stop))

    asyncio.run(run())
    assert gateway.process.wait(10) == -signal.SIGKILL
    assert len(load.completed) > 50
    # The rows of the last batch are in the journal: the next process writes them as it starts.
    gateway.start()
    ids = rows_for(tmp_path, load)
    assert set(load.completed) <= set(ids), f"{len(set(load.completed) - set(ids))} of {len(load.completed)} lost"
    assert len(ids) == len(set(ids))
    assert not list(tmp_path.glob("quotagate.db.ledger-journal.*"))


def test_redis_restarted_empty_loses_no_acknowledged_row(tmp_path: Path, make_gateway: type[Gateway]) -> None:
    """A Redis without persistence killed and restarted while requests flow: every row the
    clients were answered for reaches the database, once, rows that were only in the stream too."""
    port = closed_port()
    redis = start_redis(port)
    try:
        asyncio.run(wait_for_redis(port))
        # A slow consumer: rows wait in the stream, so the restart is sure to find some there.
        gateway = make_gateway(f"redis://127.0.0.1:{port}/0", "ledger: {flush_seconds: 1.0}\n")
        gateway.start()
        load, stop = Load(), asyncio.Event()

        async def run() -> None:
            nonlocal redis

            async def restarter() -> None:
                nonlocal redis
                await asyncio.sleep(1.5)
                redis.kill()
                redis.wait()
                redis = start_redis(port)
                await wait_for_redis(port)
                await asyncio.sleep(1.5)
                stop.set()

            await asyncio.gather(restarter(), gateway.load(load, stop, workers=4))

        asyncio.run(run())
        assert len(load.completed) > 50
        ids = wait_for_all(tmp_path, load, timeout=20)
        assert set(load.completed) <= set(ids), f"{len(set(load.completed) - set(ids))} of {len(load.completed)} lost"
        assert len(ids) == len(set(ids))
    finally:
        redis.kill()
        redis.wait()


def test_a_frozen_redis_delays_no_request_past_the_store_timeout(tmp_path: Path, make_gateway: type[Gateway]) -> None:
    """A SIGSTOPped Redis: with limiter.timeout_ms 250 no request waits much longer than that (it
    waited 2.25 s for the ledger's append), and every row arrives in the database."""
    port = closed_port()
    redis = start_redis(port)
    try:
        asyncio.run(wait_for_redis(port))
        gateway = make_gateway(f"redis://127.0.0.1:{port}/0", "limiter: {timeout_ms: 250}\n")
        gateway.start()
        load, stop = Load(), asyncio.Event()
        frozen: list[float] = []

        async def run() -> None:
            async def freezer() -> None:
                await asyncio.sleep(1.0)
                frozen.append(time.monotonic())
                redis.send_signal(signal.SIGSTOP)
                await asyncio.sleep(3.0)
                redis.send_signal(signal.SIGCONT)
                frozen.append(time.monotonic())
                await asyncio.sleep(1.0)
                stop.set()

            await asyncio.gather(freezer(), gateway.load(load, stop, workers=4))

        asyncio.run(run())
        during = [seconds for ended, seconds in load.latencies if frozen[0] <= ended <= frozen[1] + 0.5]
        assert len(during) > 20
        # The limiter's call and the ledger's append may each take the 250 ms deadline once when
        # Redis stops answering; then both go without Redis until they try it again.
        assert max(during) < 0.25 * 2 + 0.3, sorted(during)[-5:]
        ids = wait_for_all(tmp_path, load, timeout=20)
        assert set(load.completed) <= set(ids), f"{len(set(load.completed) - set(ids))} of {len(load.completed)} lost"
        assert len(ids) == len(set(ids))
    finally:
        redis.send_signal(signal.SIGCONT)
        redis.kill()
        redis.wait()


def test_sigkill_with_redis_loses_no_acknowledged_row(tmp_path: Path, make_gateway: type[Gateway]) -> None:
    """Redis mode: a node killed with SIGKILL under load, with rows in the stream that its consumer
    had read but not written, and rows it had not yet seen in the database, loses none: every
    response a client received in full has its row, once, after the node is started again."""
    port = closed_port()
    redis = start_redis(port)
    try:
        asyncio.run(wait_for_redis(port))
        # A slow consumer, so the kill finds rows waiting in the stream; the restarted node (a
        # consumer of another name) takes over what the dead one had read after a second.
        gateway = make_gateway(
            f"redis://127.0.0.1:{port}/0", "ledger: {flush_seconds: 1.0, claim_after_seconds: 1.0}\n"
        )
        gateway.start()
        assert gateway.process is not None
        load, stop = Load(), asyncio.Event()

        async def run() -> None:
            async def killer() -> None:
                await asyncio.sleep(1.5)
                assert gateway.process is not None
                gateway.process.send_signal(signal.SIGKILL)

            await asyncio.gather(killer(), gateway.load(load, stop))

        asyncio.run(run())
        assert gateway.process.wait(10) == -signal.SIGKILL
        assert len(load.completed) > 50
        # The kill left rows of completed responses unwritten (in the stream, read or not), or
        # this test would prove nothing.
        missing_at_kill = len(set(load.completed) - set(rows_for(tmp_path, load)))
        assert missing_at_kill > 0
        gateway.start()
        ids = wait_for_all(tmp_path, load, timeout=20)
        assert set(load.completed) <= set(ids), f"{len(set(load.completed) - set(ids))} of {len(load.completed)} lost"
        assert len(ids) == len(set(ids))
    finally:
        redis.kill()
        redis.wait()


def test_a_node_killed_beside_another_loses_no_row_and_the_other_serves_on(
    tmp_path: Path, make_gateway: type[Gateway]
) -> None:
    """Two nodes on one Redis and one database, both under load, and one killed with SIGKILL: the
    other's clients are answered 200 throughout, and it writes every row of the dead node's
    acknowledged responses (taken over from the stream), once, without the dead node coming back."""
    port = closed_port()
    redis = start_redis(port)
    try:
        asyncio.run(wait_for_redis(port))
        settings = "ledger: {flush_seconds: 1.0, claim_after_seconds: 1.0}\n"
        victim = make_gateway(f"redis://127.0.0.1:{port}/0", settings)
        survivor = make_gateway(f"redis://127.0.0.1:{port}/0", settings)
        victim.start()
        survivor.start()
        assert victim.process is not None
        victims, survivors, stop = Load(), Load(), asyncio.Event()
        killed: list[float] = []

        async def run() -> None:
            async def killer() -> None:
                await asyncio.sleep(1.5)
                assert victim.process is not None
                victim.process.send_signal(signal.SIGKILL)
                killed.append(time.monotonic())
                await asyncio.sleep(2.0)  # the survivor's clients go on through and after the kill
                stop.set()

            await asyncio.gather(killer(), victim.load(victims, stop), survivor.load(survivors, stop))

        asyncio.run(run())
        assert victim.process.wait(10) == -signal.SIGKILL
        assert len(victims.completed) > 50
        after_kill = [seconds for ended, seconds in survivors.latencies if ended > killed[0]]
        # Every answer the survivor gave was a complete 200, none of its clients met an error,
        # and it kept answering after the kill, without stalling.
        assert survivors.errors == [], survivors.errors[:3]
        assert set(survivors.statuses) == {200}, survivors.statuses
        assert len(survivors.completed) == sum(survivors.statuses.values())
        assert len(after_kill) > 50 and max(after_kill) < 5.0, sorted(after_kill)[-5:]
        for load in (victims, survivors):
            ids = wait_for_all(tmp_path, load, timeout=20)
            assert set(load.completed) <= set(ids), (
                f"{len(set(load.completed) - set(ids))} of {len(load.completed)} lost"
            )
            assert len(ids) == len(set(ids))
    finally:
        redis.kill()
        redis.wait()
