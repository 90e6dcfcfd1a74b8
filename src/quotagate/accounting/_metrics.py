"""Prometheus metrics. Labels are bounded: models, deployments, statuses and limit kinds come
from the configuration; keys appear only when ``metrics_per_key`` is on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..limits import Limit
from ._ledger import UsageRow

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)


def limit_kind(limit: Limit) -> str:
    """A bounded name for a limit: scope, unit, algorithm and period (never a key or a user)."""
    period = limit.calendar.value if limit.calendar else f"{limit.period:g}s"
    return f"{limit.scope or 'key'}:{limit.unit.value}:{limit.algorithm.value}:{period}"


class Metrics:
    def __init__(self, per_key: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.per_key = per_key
        labels = ["model", "deployment", "status", *(["key"] if per_key else [])]
        self.requests = Counter(
            "quotagate_requests", "Requests by status, model and deployment", labels, registry=self.registry
        )
        self.tokens = Counter("quotagate_tokens", "Tokens used", ["model", "kind"], registry=self.registry)
        self.cost = Counter("quotagate_cost_usd", "Cost in USD", ["model"], registry=self.registry)
        self.latency = Histogram(
            "quotagate_request_seconds", "Whole request", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.upstream = Histogram(
            "quotagate_upstream_seconds",
            "Time in the provider",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "quotagate_overhead_seconds",
            "Time in the gateway itself",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter("quotagate_limit_decisions", "Limit decisions", ["result"], registry=self.registry)
        self.denials = Counter("quotagate_limit_denials", "Refusals by limit kind", ["limit"], registry=self.registry)
        self.wait = Histogram(
            "quotagate_limit_wait_seconds",
            "Time spent waiting for capacity",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._gauges: list[Callable[[], Iterator[GaugeMetricFamily]]] = []
        self.registry.register(self)

    def add_gauges(self, source: Callable[[], Iterator[GaugeMetricFamily]]) -> None:
        self._gauges.append(source)

    def collect(self) -> Iterator[Any]:
        # Read at scrape time: queue depth, breaker states, store errors, ledger progress.
        for source in self._gauges:
            yield from source()

    def describe(self) -> list[Any]:
        return []

    def observe(self, row: UsageRow) -> None:
        model = row.model_served or row.model_requested or ""
        values = [model, row.deployment or "", str(row.status)]
        if self.per_key:
            values.append(row.key_id or "")
        self.requests.labels(*values).inc()
        if row.prompt_tokens or row.completion_tokens:
            self.tokens.labels(model, "prompt").inc(row.prompt_tokens)
            self.tokens.labels(model, "completion").inc(row.completion_tokens)
            if row.cached_tokens:
                self.tokens.labels(model, "cached").inc(row.cached_tokens)
        if row.cost_usd:
            self.cost.labels(model).inc(row.cost_usd)
        self.latency.observe(row.latency_ms / 1000.0)
        self.overhead.observe(row.overhead_ms / 1000.0)
        if row.upstream_ms is not None:
            self.upstream.observe(row.upstream_ms / 1000.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
