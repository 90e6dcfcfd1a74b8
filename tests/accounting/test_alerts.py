"""Quota and budget alerts, through a running gateway: each names the threshold its quota really
reached, with the real figures, and a refusal is reported as a refusal."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from ..conftest import REDIS_URL, RunningGateway, ServerThread, gateway_config
from .test_ledger import Hook, post

HI = [{"role": "user", "content": "hi"}]  # 7 prompt tokens


@pytest.fixture(params=["memory", "redis"])
def store_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Alerts run with the in-process store and with the real Redis (which also claims them)."""
    if request.param == "memory":
        return {}
    redis.Redis.from_url(REDIS_URL).flushdb()
    return {"redis": REDIS_URL}


@pytest.fixture
def hook() -> Iterator[tuple[Hook, str]]:
    receiver = Hook()
    server = ServerThread(receiver).start()
    yield receiver, server.url + "/hook"
    server.stop()


def events_after(hook: Hook, count: int) -> list[dict[str, Any]]:
    """The webhook's events once ``count`` have come, and a moment more for any that should not."""
    deadline = time.monotonic() + 5
    while len(hook.events) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return [{k: e.get(k) for k in ("event", "threshold", "used", "amount", "requested")} for e in hook.events]


def start(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    webhook: str,
    completion_tokens: int,
    **overrides: Any,
) -> tuple[RunningGateway, str]:
    mock = start_mock(completion_tokens=completion_tokens)
    gw = start_gateway(
        gateway_config(
            sqlite_url,
            mock.url,
            tiers={"free": {"tpd": 100}},
            alerts={"webhook": webhook, "thresholds": [0.5, 0.8, 1.0]},
            **overrides,
        )
    )
    return gw, gw.create_key()["key"]


def test_a_refusal_below_the_amount_is_not_reported_as_100_percent(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    hook: tuple[Hook, str],
    store_config: dict[str, Any],
) -> None:
    """91 of 100 tokens used, then a request needing 27 is refused: the alerts say 80 % reached
    and "refused", with those figures; no "100 %" while 9 tokens are left."""
    gw, key = start(start_gateway, start_mock, sqlite_url, hook[1], 84, **store_config)
    first = post(gw, key, {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 84})
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 91
    assert post(gw, key, {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 20}).status_code == 429
    assert events_after(hook[0], 2) == [
        {"event": "limit_threshold_reached", "threshold": 0.8, "used": 91, "amount": 100, "requested": None},
        {"event": "limit_refused", "threshold": None, "used": 91, "amount": 100, "requested": 27},
    ]


def test_a_request_settled_past_the_amount_sends_one_alert_with_its_real_figures(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    hook: tuple[Hook, str],
    store_config: dict[str, Any],
) -> None:
    """A request estimated at 8 tokens that used 119 of the 100: one alert, "100 %" with used
    119, sent when it settles (not "50 %" with used 119 at the next request)."""
    gw, key = start(
        start_gateway, start_mock, sqlite_url, hook[1], 112, limiter={"expected_output_tokens": 1}, **store_config
    )
    assert post(gw, key, {"model": "gpt-4o-mini", "messages": HI}).json()["usage"]["total_tokens"] == 119
    assert events_after(hook[0], 1) == [
        {"event": "limit_threshold_reached", "threshold": 1.0, "used": 119, "amount": 100, "requested": None}
    ]


def test_thresholds_judge_what_a_request_used_not_what_it_reserved(
    start_gateway: Callable[..., RunningGateway],
    start_mock: Callable[..., ServerThread],
    sqlite_url: str,
    hook: tuple[Hook, str],
) -> None:
    """A request that reserves 67 of 100 tokens (max_tokens 60) and uses 15 sends nothing; the
    one that brings the real use to 60 sends "50 %"."""
    gw, key = start(start_gateway, start_mock, sqlite_url, hook[1], 8)
    for _ in range(3):
        assert post(gw, key, {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 60}).status_code == 200
    assert events_after(hook[0], 1) == []
    assert post(gw, key, {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 40}).status_code == 200
    assert events_after(hook[0], 1) == [
        {"event": "limit_threshold_reached", "threshold": 0.5, "used": 60, "amount": 100, "requested": None}
    ]
