"""GET /admin/deployments shows what the console's deployments page charts: latency percentiles,
the provider limits' size and headroom, and why a deployment is cooling down."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ..conftest import RunningGateway, ServerThread
from .test_routing import dep, deployments, post, start


def test_deployments_show_latency_percentiles_limits_and_why_they_cool_down(
    start_gateway: Callable[..., RunningGateway], start_mock: Callable[..., ServerThread], sqlite_url: str
) -> None:
    """After traffic: p50 <= p95 <= p99, rpm's amount, capacity and remaining, and a 429's reason."""
    steady = start_mock(latency_ms=5)
    limited = start_mock(fail_first=1, retry_after=30)
    gw, key = start(
        start_gateway,
        sqlite_url,
        [
            {"name": "steady", "deployments": [dep(steady, rpm=600, tpm=100000)]},
            {"name": "limited", "deployments": [dep(limited), dep(steady, priority=1)]},
        ],
    )
    for _ in range(5):
        assert post(gw, key, {"model": "steady", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    # The first deployment answers 429 asking for 30 s; the second serves meanwhile.
    assert post(gw, key, {"model": "limited", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    shown = {(d["model"], d["priority"]): d for d in deployments(gw).values()}
    shown = {"steady": shown[("steady", 0)], "limited": shown[("limited", 0)]}
    percentiles = shown["steady"]["latency_percentiles"]
    assert 5 <= percentiles["p50"] <= percentiles["p95"] <= percentiles["p99"]
    rpm = shown["steady"]["limits"]["rpm"]
    assert rpm["limit"] == 600 and rpm["capacity"] >= 1 and rpm["remaining"] <= rpm["capacity"]
    assert shown["steady"]["limits"]["tpm"]["limit"] == 100000
    assert shown["steady"]["cooldown_reason"] is None
    assert shown["limited"]["cooldown_seconds_left"] > 20
    assert shown["limited"]["cooldown_reason"] == "429 from the provider, asking to wait 30 s"
    assert shown["limited"]["latency_percentiles"] is None  # it never answered
    assert httpx.get(gw.url + "/admin/deployments").status_code == 401
