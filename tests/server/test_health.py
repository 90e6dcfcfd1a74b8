"""Liveness and readiness."""

from __future__ import annotations

import gc
from collections.abc import Callable

import httpx

from quotagate.server._run import YOUNG_GC_THRESHOLD, tune_gc_for_serving

from ..conftest import REDIS_URL, RunningGateway, ServerThread, closed_port, gateway_config


def test_health_and_ready_with_redis(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """/health is always up; /ready checks the database and the configured Redis."""
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url, redis=REDIS_URL))
    assert httpx.get(gw.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gw.url + "/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


def test_not_ready_when_redis_is_down(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """An unreachable Redis makes /ready answer 503 (and say why) while /health stays 200."""
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url, redis=f"redis://127.0.0.1:{closed_port()}/0"))
    ready = httpx.get(gw.url + "/ready", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["redis"] != "ok"
    assert httpx.get(gw.url + "/health").status_code == 200


def test_gateway_with_keys_in_postgresql(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, postgres_url: str
) -> None:
    """With a postgresql:// database the gateway keeps its keys there and is ready."""
    gw = start_gateway(gateway_config(postgres_url, mock_upstream.url))
    key = gw.create_key(user="pg-user")["key"]
    response = httpx.post(
        gw.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200
    assert httpx.get(gw.url + "/ready").json()["checks"] == {"database": "ok"}


def test_an_embedded_gateway_leaves_the_garbage_collector_alone(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """A program that runs the gateway in its own process keeps its collector as it set it (the
    gateway's start froze every object of the process and raised the young threshold to 10,000)."""
    before = gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    assert httpx.get(gw.url + "/ready").status_code == 200
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == before


def test_serve_turns_garbage_collection_back_on_once_started() -> None:
    """`quotagate serve` imports with collection off; once the gateway has started it collects
    again (a gateway that never collected would grow without bound), less often, with what is
    alive at start frozen."""
    threshold = gc.get_threshold()
    gc.disable()
    try:
        tune_gc_for_serving()
        assert gc.isenabled() and gc.get_threshold()[0] == YOUNG_GC_THRESHOLD and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        gc.enable()
