"""The cache shared by every node through Redis (`cache: {store: redis}`): one node's answer is
another's hit, exact and semantic, a purge reaches them all, and a Redis that goes away makes
requests uncached, never failed."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from ..conftest import MASTER_KEY, REDIS_URL, RunningGateway, ServerThread
from .test_gateway_cache import cached_config, served

SEMANTIC = {"free": {"rpm": 600, "cache": {"mode": "semantic", "namespace": "tier"}}}


def ask(gateway: RunningGateway, key: str, question: str) -> httpx.Response:
    response = httpx.post(
        gateway.v1 + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def shared_config(sqlite_url: str, upstream: str, redis_url: str, **overrides: Any) -> Any:
    return cached_config(
        sqlite_url,
        upstream,
        tiers=SEMANTIC,
        redis=redis_url,
        cache={"store": "redis"},
        limiter={"on_store_failure": "open"},
        **overrides,
    )


@pytest.fixture
def two_nodes(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> tuple[RunningGateway, RunningGateway]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    config = shared_config(sqlite_url, mock_upstream.url, REDIS_URL)
    return start_gateway(config), start_gateway(config)


def test_one_nodes_answer_is_the_other_nodes_hit(
    two_nodes: tuple[RunningGateway, RunningGateway], mock_upstream: ServerThread
) -> None:
    one, two = two_nodes
    key = one.create_key(tier="free")["key"]
    before = served(mock_upstream)
    assert ask(one, key, "Which courier do you ship with?").headers["x-quotagate-cache"] == "miss"
    time.sleep(0.2)
    assert ask(two, key, "Which courier do you ship with?").headers["x-quotagate-cache"] == "hit"
    assert ask(two, key, "How do I reset my password?").headers["x-quotagate-cache"] == "miss"
    # The other node's semantic index learns the question within a second (asked sooner, a miss
    # would store the reworded question, and the test would see that instead).
    time.sleep(1.0)
    assert ask(one, key, "How can I reset my password?").headers["x-quotagate-cache"] == "semantic-hit"
    assert served(mock_upstream) == before + 2
    # A purge on one node is a purge everywhere: the store is one, and the index hears of it.
    with httpx.Client(base_url=two.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}) as admin:
        stats = admin.get("/admin/cache").json()
        # Two answers, and the second under the reworded question's own key too.
        assert stats["store"] == "redis" and stats["entries"] == 3
        assert admin.delete("/admin/cache", params={"namespace": "tier:free"}).json()["purged"] == 3
    assert ask(one, key, "Which courier do you ship with?").headers["x-quotagate-cache"] == "miss"
    assert ask(one, key, "How can I reset my password?").headers["x-quotagate-cache"] == "miss"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def own_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of the test's own, which the test may kill."""
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", process
    if process.poll() is None:
        process.kill()
    process.wait(10)


def test_a_redis_that_goes_away_makes_requests_uncached_not_failed(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, process = own_redis
    gateway = start_gateway(shared_config(sqlite_url, mock_upstream.url, url))
    key = gateway.create_key(tier="free")["key"]
    assert ask(gateway, key, "Which courier do you ship with?").headers["x-quotagate-cache"] == "miss"
    time.sleep(0.2)
    assert ask(gateway, key, "Which courier do you ship with?").headers["x-quotagate-cache"] == "hit"
    process.kill()
    process.wait(10)
    before = served(mock_upstream)
    for _ in range(3):
        began = time.monotonic()
        assert ask(gateway, key, "Which courier do you ship with?").headers["x-quotagate-cache"] == "miss"
        assert time.monotonic() - began < 2.0
    assert served(mock_upstream) == before + 3
