"""The collector's histograms expose exactly what prometheus-client's own Histogram would."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quotagate.accounting import Metrics
from quotagate.config import parse_config

from ..conftest import RunningGateway, ServerThread

# Values on bucket bounds (le is inclusive), between them, below the first and above the last.
OBSERVED = [0.0, 0.0005, 0.0007, 0.001, 0.0025, 0.003, 0.1, 0.25, 1.0, 60.0, 119.9, 120.0, 121.0, 5_000.0]


def buckets(exposition: str, family_name: str) -> dict[str, float]:
    families = {family.name: family for family in text_string_to_metric_families(exposition)}
    samples = families[family_name].samples
    return {
        sample.labels.get("le", sample.name): sample.value
        for sample in samples
        if sample.name.endswith(("_bucket", "_count", "_sum"))
    }


def test_wait_histogram_matches_prometheus_client() -> None:
    metrics = Metrics()
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "quotagate_limit_wait_seconds",
        "reference",
        registry=reference_registry,
        buckets=[float(b) for b in metrics.wait.bounds],
    )
    for value in OBSERVED:
        metrics.wait.observe(value)
        reference.observe(value)
    ours = buckets(metrics.exposition()[0].decode(), "quotagate_limit_wait_seconds")
    theirs = buckets(generate_latest(reference_registry).decode(), "quotagate_limit_wait_seconds")
    assert ours == theirs
    assert ours["+Inf"] == len(OBSERVED)


def test_deployment_series_are_unique_per_deployment(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> None:
    """Two models whose first deployment is the same provider model: one breaker series each, and apart in usage."""
    deployment = {
        "provider": "openai-compatible",
        "base_url": mock_upstream.url + "/v1",
        "api_key": "env:TEST_UPSTREAM_KEY",
        "model": "gpt-4o-mini",
    }
    config = parse_config(
        {
            "database": sqlite_url,
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {}},
            "models": [{"name": name, "deployments": [deployment]} for name in ("gpt-4o-mini", "house-model")],
        }
    )
    gw = start_gateway(config)
    key = gw.create_key(tier="free")["key"]
    for model in ("gpt-4o-mini", "house-model"):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        assert (
            httpx.post(gw.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )
    exposition = httpx.get(gw.url + "/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(exposition)}
    breakers = [sample.labels["deployment"] for sample in families["quotagate_breaker_state"].samples]
    assert sorted(breakers) == [
        "gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)",
        "house-model#0 (openai-compatible/gpt-4o-mini)",
    ]
    with gw.admin() as admin:
        groups = {
            row["deployment"]: row["requests"]
            for row in admin.get("/admin/usage", params={"by": "deployment"}).json()["data"]
        }
    assert groups == {
        "gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)": 1,
        "house-model#0 (openai-compatible/gpt-4o-mini)": 1,
    }


def test_a_cache_result_outside_the_three_is_refused() -> None:
    """The result label has three values: another result is a caller's mistake, not a new series."""
    metrics = Metrics()
    with pytest.raises(ValueError, match="semantic-hit"):
        metrics.cache("gpt-4o-mini", "semantic_hit", 0.0)
    assert "quotagate_cache_lookups_total{" not in metrics.exposition()[0].decode()
