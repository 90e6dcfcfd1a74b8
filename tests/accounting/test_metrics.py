"""The collector's histograms expose exactly what prometheus-client's own Histogram would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quotagate.accounting import Metrics

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
