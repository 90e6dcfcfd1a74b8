"""Prometheus metrics. Labels are bounded: models, deployments, statuses and limit kinds come
from the configuration, cache results are three words; keys appear only when ``metrics_per_key``
is on.

Every request updates a handful of counters and histograms. prometheus-client's metric objects
take a lock and look up their label children on each update, which adds up over a request
(bench/NOTES.md), so the request path counts into plain dictionaries and bucket arrays instead,
and this collector turns them into metric families when /metrics is scraped (prometheus-client's
documented way for custom collectors). The exposition is the same as with Counter and Histogram
objects. prometheus-client itself is imported at the first scrape, to keep it out of the
gateway's start-up (bench/NOTES.md).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..limits import Limit
from .ledger import UsageRow

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

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


# A cache lookup's result, as the cache names it, and as the label's value: snake_case, like the
# metric and label names a query writes next to it.
_CACHE_RESULTS = {"hit": "hit", "semantic-hit": "semantic_hit", "miss": "miss"}


def limit_kind(limit: Limit) -> str:
    """A bounded name for a limit: scope, unit, algorithm and period (never a key or a user)."""
    period = limit.calendar.value if limit.calendar else f"{limit.period:g}s"
    return f"{limit.scope or 'key'}:{limit.unit.value}:{limit.algorithm.value}:{period}"


class _Histogram:
    """Counts per bucket (not cumulative until collected) and the sum, as a Histogram keeps them."""

    __slots__ = ("bounds", "counts", "name", "sum", "text")

    def __init__(self, name: str, text: str, bounds: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.name = name
        self.text = text
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Bucket "le b" holds values <= b: the first bound not below the value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        return HistogramMetricFamily(self.name, self.text, buckets=buckets, sum_value=self.sum)


def _counter(name: str, text: str, labels: list[str], values: Mapping[Any, float]) -> CounterMetricFamily:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, text, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


class Metrics:
    def __init__(self, per_key: bool = False) -> None:
        self._registry: CollectorRegistry | None = None  # made at the first scrape
        self.per_key = per_key
        self._request_labels = ["model", "deployment", "status", *(["key"] if per_key else [])]
        self._requests: dict[tuple[str, ...], int] = {}
        self._tokens: dict[str, list[int]] = {}  # model -> [prompt, completion, cached]
        self._cost: dict[str, float] = {}
        self._decisions: dict[str, int] = {}
        self._denials: dict[str, int] = {}
        self._cache_lookups: dict[tuple[str, str], int] = {}  # (model, result label) -> lookups
        self._cache_saved: dict[str, float] = {}  # model -> USD
        self._routed: dict[tuple[str, str, str], int] = {}  # (routed model, class, served model)
        self._downgrades: dict[tuple[str, str], int] = {}  # (requested model, served model)
        self.latency = _Histogram("quotagate_request_seconds", "Whole request")
        self.upstream = _Histogram("quotagate_upstream_seconds", "Time in the provider")
        self.overhead = _Histogram("quotagate_overhead_seconds", "Time in the gateway itself")
        self.wait = _Histogram("quotagate_limit_wait_seconds", "Time spent waiting for capacity")
        self._gauges: list[Callable[[], Iterator[GaugeMetricFamily]]] = []

    def add_gauges(self, source: Callable[[], Iterator[GaugeMetricFamily]]) -> None:
        self._gauges.append(source)

    # -- the request path -------------------------------------------------------------------------

    def observe(self, row: UsageRow, model: str) -> None:
        """Count a request's row under ``model``: the configured model it was charged to, or ""
        for one that named none the gateway serves (labels stay bounded)."""
        if self.per_key:
            key: tuple[str, ...] = (model, row.deployment or "", str(row.status), row.key_id or "")
        else:
            key = (model, row.deployment or "", str(row.status))
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        if row.prompt_tokens or row.completion_tokens:
            counts = self._tokens.get(model)
            if counts is None:
                counts = self._tokens[model] = [0, 0, 0]
            counts[0] += row.prompt_tokens
            counts[1] += row.completion_tokens
            counts[2] += row.cached_tokens
        if row.cost_usd:
            self._cost[model] = self._cost.get(model, 0.0) + row.cost_usd
        self.latency.observe(row.latency_ms / 1000.0)
        self.overhead.observe(row.overhead_ms / 1000.0)
        if row.upstream_ms is not None:
            self.upstream.observe(row.upstream_ms / 1000.0)

    def decision(self, allowed: bool, denied_by: Limit | None) -> None:
        result = "allowed" if allowed else "denied"
        self._decisions[result] = self._decisions.get(result, 0) + 1
        if denied_by is not None:
            kind = limit_kind(denied_by)
            self._denials[kind] = self._denials.get(kind, 0) + 1

    def cache(self, model: str, result: str, saved_usd: float) -> None:
        """Count a response cache lookup for ``model`` (a configured model, as observe's) and
        what its answer saved: ``result`` is "hit", "semantic-hit" or "miss"."""
        label = _CACHE_RESULTS.get(result)
        if label is None:
            # Not a new label value: the series stay bounded, and a caller's typo shows in its tests.
            raise ValueError(f"unknown cache result {result!r}; expected one of {', '.join(_CACHE_RESULTS)}")
        key = (model, label)
        self._cache_lookups[key] = self._cache_lookups.get(key, 0) + 1
        if saved_usd:
            self._cache_saved[model] = self._cache_saved.get(model, 0.0) + saved_usd

    def tiering(self, routed: str | None, route_class: str | None, downgraded_from: str | None, served: str) -> None:
        """Count a request that model tiering moved: a routed model's (``routed``, ``route_class``)
        and a downgraded one's (from ``downgraded_from``), served by ``served`` ("" for none).
        Every name is a configured one, never a client's."""
        if routed is not None and route_class is not None:
            key = (routed, route_class, served)
            self._routed[key] = self._routed.get(key, 0) + 1
        if downgraded_from is not None:
            pair = (downgraded_from, served)
            self._downgrades[pair] = self._downgrades.get(pair, 0) + 1

    # -- scraping -----------------------------------------------------------------------------------

    def collect(self) -> Iterable[Any]:
        yield _counter(
            "quotagate_requests", "Requests by status, model and deployment", self._request_labels, self._requests
        )
        tokens: dict[tuple[str, str], int] = {}
        for model, (prompt, completion, cached) in self._tokens.items():
            tokens[(model, "prompt")], tokens[(model, "completion")] = prompt, completion
            if cached:
                tokens[(model, "cached")] = cached
        yield _counter("quotagate_tokens", "Tokens used", ["model", "kind"], tokens)
        yield _counter("quotagate_cost_usd", "Cost in USD", ["model"], self._cost)
        for histogram in (self.latency, self.upstream, self.overhead, self.wait):
            yield histogram.family()
        yield _counter("quotagate_limit_decisions", "Limit decisions", ["result"], self._decisions)
        yield _counter("quotagate_limit_denials", "Refusals by limit kind", ["limit"], self._denials)
        yield _counter(
            "quotagate_cache_lookups", "Response cache lookups by result", ["model", "result"], self._cache_lookups
        )
        yield _counter(
            "quotagate_cache_saved_usd", "USD that cache hits saved (their answers' cost)", ["model"], self._cache_saved
        )
        yield _counter(
            "quotagate_routed_requests",
            "Requests for routed models by class and the model that served them",
            ["model", "class", "served"],
            self._routed,
        )
        yield _counter(
            "quotagate_downgrades",
            "Requests a cheaper model served instead of the one the limits refused",
            ["requested", "served"],
            self._downgrades,
        )
        # Read at scrape time: queue depth, breaker states, store errors, ledger progress.
        for source in self._gauges:
            yield from source()

    def describe(self) -> list[Any]:
        return []

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry()
            self._registry.register(self)
        return generate_latest(self._registry), CONTENT_TYPE_LATEST
