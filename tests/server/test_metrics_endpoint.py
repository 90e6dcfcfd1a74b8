"""Who may read GET /metrics: anyone by default, scrapers with the token when one is set, nobody
when it is switched off."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quotagate.config import ConfigError, missing_secrets
from quotagate.server import Gateway

from ..conftest import RunningGateway, ServerThread, gateway_config

SCRAPE_TOKEN = "scrape-token-7f3a"


def test_metrics_are_open_by_default(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Without a metrics block a scraper needs nothing: Prometheus's default setup keeps working."""
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    response = httpx.get(gw.url + "/metrics")
    assert response.status_code == 200
    assert "quotagate_requests" in {family.name for family in text_string_to_metric_families(response.text)}


def test_a_metrics_token_is_required_when_set(
    start_gateway: Callable[..., RunningGateway],
    mock_upstream: ServerThread,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With metrics.token, /metrics answers 401 (and says how to authenticate) unless the request
    carries the token as a bearer token; the proxy's keys are not it."""
    monkeypatch.setenv("TEST_SCRAPE_TOKEN", SCRAPE_TOKEN)
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url, metrics={"token": "env:TEST_SCRAPE_TOKEN"}))
    key = gw.create_key()["key"]
    for authorization in (None, "Bearer wrong", f"Basic {SCRAPE_TOKEN}", f"Bearer {key}", SCRAPE_TOKEN):
        response = httpx.get(gw.url + "/metrics", headers={"Authorization": authorization} if authorization else {})
        assert response.status_code == 401, authorization
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "invalid_metrics_token"
    allowed = httpx.get(gw.url + "/metrics", headers={"Authorization": f"bearer {SCRAPE_TOKEN}"})
    assert allowed.status_code == 200 and "quotagate_requests" in allowed.text
    assert httpx.get(gw.url + "/health").status_code == 200  # the other open endpoints stay open


def test_metrics_can_be_switched_off(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """metrics.enabled: false answers /metrics as an unknown route, and requests are still served."""
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url, metrics={"enabled": False}))
    response = httpx.get(gw.url + "/metrics")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url"
    key = gw.create_key()["key"]
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=chat).is_success


def test_the_metrics_token_is_a_secret_reference(
    mock_upstream: ServerThread, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token written in the file is a configuration error; a reference to a variable that is not
    set is reported by `config check` and stops the gateway at start, not at the first scrape."""
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-upstream-test-key-123456")
    monkeypatch.delenv("TEST_MISSING_SCRAPE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"metrics\.token: .*env:NAME"):
        gateway_config(sqlite_url, mock_upstream.url, metrics={"token": SCRAPE_TOKEN})
    config = gateway_config(sqlite_url, mock_upstream.url, metrics={"token": "env:TEST_MISSING_SCRAPE_TOKEN"})
    assert any(p.startswith("metrics.token: ") for p in missing_secrets(config))
    with pytest.raises(ConfigError, match="TEST_MISSING_SCRAPE_TOKEN"):
        Gateway(config)


def test_cache_lookups_and_savings_are_exposed(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """The cache's lookups by model and result (hit, semantic_hit, miss) and what its hits saved by
    model, as counters a scraper reads; a model without savings has no savings series."""
    gw = start_gateway(gateway_config(sqlite_url, mock_upstream.url))
    metrics = gw.gateway.metrics
    for result, saved in (("miss", 0.0), ("hit", 0.003), ("hit", 0.003), ("semantic-hit", 0.002)):
        metrics.cache("gpt-4o-mini", result, saved)
    metrics.cache("house-model", "miss", 0.0)
    families = {family.name: family for family in text_string_to_metric_families(httpx.get(gw.url + "/metrics").text)}
    lookups = {
        (sample.labels["model"], sample.labels["result"]): sample.value
        for sample in families["quotagate_cache_lookups"].samples
        if sample.name == "quotagate_cache_lookups_total"
    }
    assert lookups == {
        ("gpt-4o-mini", "miss"): 1,
        ("gpt-4o-mini", "hit"): 2,
        ("gpt-4o-mini", "semantic_hit"): 1,
        ("house-model", "miss"): 1,
    }
    saved = {
        sample.labels["model"]: sample.value
        for sample in families["quotagate_cache_saved_usd"].samples
        if sample.name == "quotagate_cache_saved_usd_total"
    }
    assert saved == {"gpt-4o-mini": pytest.approx(0.008)}
