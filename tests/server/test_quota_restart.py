"""Without Redis, calendar quotas and budgets survive a restart of the gateway, over real HTTP: a
gateway stopped and started again on the same database, and a `quotagate serve` process stopped
gracefully or killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import RunningGateway, ServerThread, cli_key, closed_port, gateway_config, wait_until_ready

# With the mock upstream, a request costs its prompt (7 tokens) plus max_tokens (16).
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
UPSTREAM_KEY = "sk-upstream-test-key-123456"

# name -> (configuration, the label of the limit that runs out, how many of 6 requests it admits)
CASES: dict[str, tuple[dict[str, Any], str, int]] = {
    "tpd": ({"tiers": {"free": {"tpd": 100}}}, "tokens per day (TPD)", 4),
    "usd_per_day": (
        # $1,000 per million tokens: a request costs $0.023, and $0.10 pays for four.
        {
            "tiers": {"free": {"usd_per_day": 0.10}},
            "pricing": {"gpt-4o-mini": {"input": 1000.0, "output": 1000.0}},
        },
        "USD per day (budget)",
        4,
    ),
    "tpd-no-ledger": ({"tiers": {"free": {"tpd": 100}}, "ledger": {"enabled": False}}, "tokens per day (TPD)", 4),
    "tokens_per_month": ({"tiers": {"free": {"tokens_per_month": 100}}}, "tokens per month", 4),
    "requests_per_month": ({"tiers": {"free": {"requests_per_month": 3}}}, "requests per month", 3),
    "limits-per-day": (
        {
            "tiers": {"free": {}},
            "limits": [{"scope": "user", "unit": "tokens", "amount": 100, "per": "day", "name": "daily"}],
        },
        "daily for user alice",
        4,
    ),
}


def six(url: str, key: str) -> list[int]:
    """The statuses of six chat requests, one after the other."""
    headers = {"Authorization": f"Bearer {key}"}
    return [
        httpx.post(f"{url}/v1/chat/completions", headers=headers, json=CHAT, timeout=30).status_code for _ in range(6)
    ]


def used(url: str, key: str, label: str) -> int:
    quota = httpx.get(f"{url}/v1/quota", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    return int(next(entry["used"] for entry in quota["limits"] if entry["name"] == label))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """The embedded default's SQLite file, and PostgreSQL without Redis: one node either way."""
    return sqlite_url if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_quotas_and_budgets_survive_a_restart(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, database: str, case: str
) -> None:
    """Spent before a restart stays spent after it: every request of the second run is refused."""
    overrides, label, admitted = CASES[case]
    config = gateway_config(database, mock_upstream.url, **overrides)
    first = start_gateway(config)
    key = first.create_key(user="alice")["key"]
    assert six(first.url, key) == [200] * admitted + [429] * (6 - admitted)
    spent = used(first.url, key, label)
    first.server.stop()  # graceful: uvicorn runs the gateway's shutdown

    second = start_gateway(config)
    assert used(second.url, key, label) == spent
    assert six(second.url, key) == [429] * 6


def serve(config: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port", str(port)], env=env
    )
    try:
        wait_until_ready(port)
    except AssertionError:
        process.kill()
        raise
    return process


def ledger(database: Path) -> tuple[int, int]:
    """(rows, tokens of the admitted requests) as the file holds them."""
    with sqlite3.connect(database) as conn:
        rows, tokens = conn.execute(
            "SELECT count(*), coalesce(sum(CASE WHEN status = 200 THEN prompt_tokens + completion_tokens END), 0) "
            "FROM qg_usage"
        ).fetchone()
    return int(rows), int(tokens)


def saved_tpd(database: Path) -> float:
    with sqlite3.connect(database) as conn:
        return float(conn.execute("SELECT used FROM qg_quota_state WHERE limit_key LIKE '%:tpd'").fetchone()[0])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "sigkill"])
def test_a_restarted_serve_process_keeps_its_quota(
    tmp_path: Path, mock_upstream: ServerThread, stop: signal.Signals
) -> None:
    """`quotagate serve` on SQLite, stopped (SIGTERM) or killed (SIGKILL, once its ledger batch is
    written) and started again: the tier's tpd of 100 admits nothing more, and the ledger holds 92."""
    database = tmp_path / "quotagate.db"
    config = tmp_path / "quotagate.yaml"
    # Stopped gracefully, only the shutdown's write can have kept the quota: the batches wait 60 s.
    flush = 0.2 if stop is signal.SIGKILL else 60.0
    config.write_text(
        f"database: sqlite:///{database}\n"
        "tiers: {free: {tpd: 100}}\n"
        f"ledger: {{flush_seconds: {flush}}}\n"
        "logging: {level: warning}\n"
        "models:\n  - name: gpt-4o-mini\n"
        f"    deployments: [{{provider: openai-compatible, base_url: '{mock_upstream.url}/v1', api_key: env:TEST_UPSTREAM_KEY}}]\n"
    )
    env = {**os.environ, "TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    key = cli_key(config, env=env)
    port = closed_port()
    first = serve(config, port, env)
    try:
        assert six(f"http://127.0.0.1:{port}", key) == [200, 200, 200, 200, 429, 429]
        if stop is signal.SIGKILL:
            # Killed once the ledger has written the six rows: the quota must hold what they do.
            deadline = time.monotonic() + 10
            while ledger(database)[0] < 6:
                assert time.monotonic() < deadline, "the ledger wrote nothing"
                time.sleep(0.05)
        first.send_signal(stop)
        # A graceful stop exits 0; a killed process dies by its signal.
        assert first.wait(20) == (0 if stop == signal.SIGTERM else -stop)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)

    second = serve(config, port, env)
    try:
        assert six(f"http://127.0.0.1:{port}", key) == [429] * 6
    finally:
        second.terminate()
        second.wait(20)
    assert ledger(database) == (12, 92)
    assert saved_tpd(database) == 92.0
