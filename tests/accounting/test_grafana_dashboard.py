"""The Grafana dashboard in dashboards/grafana/ (issue 23) queries only what GET /metrics exports:
every metric its queries name, and every label they select or group by, is in a real gateway's
exposition after a few requests of each kind."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import RunningGateway, ServerThread, gateway_config

DASHBOARD = Path(__file__).parents[2] / "dashboards" / "grafana" / "quotagate.json"

CLAUDE, GEMINI = "claude-sonnet-4.5", "gemini-2.5-flash"

# Labels Prometheus attaches to every scraped series (the target's), never in the exposition.
TARGET_LABELS = {"instance", "job"}

METRIC = re.compile(r"\bquotagate_[A-Za-z0-9_]*[A-Za-z0-9]")
SELECTOR = re.compile(r"\b(quotagate_[A-Za-z0-9_]*[A-Za-z0-9])\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
AGGREGATION = re.compile(
    r"\b(?:sum|avg|min|max|count|group|stddev|stdvar|topk|bottomk|quantile)\s+by\s*\(([^)]*)\)\s*\("
)
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(")
# label_replace(v, "dst", "replacement", "src", "regex"): dst is made by the query, src must exist.
LABEL_REPLACE = re.compile(r"label_replace\(.*?,\s*\"(\w+)\"\s*,\s*\"[^\"]*\"\s*,\s*\"(\w+)\"")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every PromQL query (panel targets and the template variables') with its legend format."""
    found = [
        (target["expr"], target.get("legendFormat", ""))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((query["query"] if isinstance(query, dict) else query, ""))
    return found


def argument(expr: str, start: int) -> str:
    """The text inside the parenthesis that opens at ``start``."""
    depth = 0
    for index in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[index], 0)
        if depth == 0:
            return expr[start + 1 : index]
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def derived(expr: str) -> set[str]:
    """Labels the query makes itself (label_replace's destinations)."""
    return {destination for destination, _ in LABEL_REPLACE.findall(expr)}


def labels_used(expr: str) -> dict[str, set[str]]:
    """The labels the query needs on each metric it names: its selectors' matchers, the labels
    its aggregations group by, and the sources of its label_replace calls."""
    needed: dict[str, set[str]] = {}
    for metric, matchers in SELECTOR.findall(expr):
        needed.setdefault(metric, set()).update(MATCHER.findall(matchers))
    aggregations = list(AGGREGATION.finditer(expr))
    # Every grouping is an aggregation's "by (...)" written before its argument, which this test
    # can check; anything else (postfix "by", "without", "on", ...) would go unchecked.
    assert len(GROUPING.findall(expr)) == len(aggregations), f"write groupings as 'sum by (...) (...)': {expr}"
    for aggregation in aggregations:
        inner = argument(expr, aggregation.end() - 1)
        grouped = {label.strip() for label in aggregation.group(1).split(",") if label.strip()}
        for metric in METRIC.findall(inner):
            needed.setdefault(metric, set()).update(grouped - derived(inner) - TARGET_LABELS)
    for match in re.finditer(r"label_replace\(", expr):
        inner = argument(expr, match.end() - 1)
        for _, source in LABEL_REPLACE.findall(match.group(0) + inner + ")"):
            for metric in METRIC.findall(inner):
                needed.setdefault(metric, set()).add(source)
    for metric in METRIC.findall(expr):
        needed.setdefault(metric, set())
    return needed


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    """Title, uid, schema, a Prometheus datasource variable, unique ids, and every panel placed
    and querying that datasource."""
    dashboard = load()
    assert (dashboard["title"], dashboard["uid"], dashboard["schemaVersion"]) == ("quotagate", "quotagate", 39)
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"model", "deployment"} <= variables.keys()
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and "legendFormat" in target, panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), panel["title"]


@pytest.fixture
def exposition(
    start_gateway: Callable[..., RunningGateway], mock_upstream: ServerThread, sqlite_url: str
) -> dict[str, set[str]]:
    """A gateway's /metrics after a success, a cache miss and hit, a tier's rpm refusal, a
    downgrade and a routed request: the labels seen on each family and sample name."""

    def deployment(model: str) -> dict[str, Any]:
        url = mock_upstream.url + "/v1"
        return {"provider": "openai-compatible", "base_url": url, "api_key": "env:TEST_UPSTREAM_KEY", "model": model}

    classes = [{"name": "plain", "model": GEMINI}, {"name": "complex", "model": CLAUDE, "rules": {"keywords": ["why"]}}]
    config = gateway_config(
        sqlite_url,
        mock_upstream.url,
        models=[
            {"name": CLAUDE, "deployments": [deployment(CLAUDE)]},
            {"name": GEMINI, "deployments": [deployment(GEMINI)]},
            {"name": "auto", "route": {"default": "plain", "classes": classes}},
        ],
        tiers={
            "free": {"rpm": 60, "cache": {"mode": "exact", "ttl": 600}, "on_limit": {"downgrade": GEMINI}},
            "tight": {"rpm": 1},
        },
        limits=[{"scope": "key+model", "unit": "requests", "amount": 1, "per": "minute", "match": {"model": [CLAUDE]}}],
    )
    gateway = start_gateway(config)
    free, tight = gateway.create_key(tier="free")["key"], gateway.create_key(user="bob", tier="tight")["key"]

    def ask(key: str, model: str, question: str) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 8}
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(gateway.v1 + "/chat/completions", json=body, headers=headers, timeout=10).status_code

    statuses = [
        ask(free, GEMINI, "hello"),  # a cache miss, stored
        ask(free, GEMINI, "hello"),  # a cache hit
        ask(free, CLAUDE, "hello"),
        ask(free, CLAUDE, "goodbye"),  # past Claude's one a minute: Gemini serves it
        ask(free, "auto", "why is the sky blue?"),  # routed to the complex class
        ask(tight, GEMINI, "hello"),
        ask(tight, GEMINI, "hello again"),  # past the tier's rpm: 429
    ]
    assert statuses == [200, 200, 200, 200, 200, 200, 429]
    seen: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics").text):
        seen.setdefault(family.name, set())
        for sample in family.samples:
            seen.setdefault(sample.name, set()).update(sample.labels)
            seen[family.name].update(sample.labels)
    return seen


def test_the_dashboard_queries_only_exported_metrics_and_labels(exposition: dict[str, set[str]]) -> None:
    """Each metric a query names is exported; each label it selects, groups by or writes in a
    legend is on that metric's samples."""
    used: dict[str, set[str]] = {}
    legends: list[tuple[str, set[str], set[str]]] = []
    for expr, legend in queries(load()):
        needed = labels_used(expr)
        assert needed, f"a query that names no quotagate metric: {expr}"
        for metric, labels in needed.items():
            used.setdefault(metric, set()).update(labels)
        available = set().union(*(exposition.get(metric, set()) for metric in needed)) | derived(expr) | TARGET_LABELS
        legends.append((legend, set(LEGEND_LABEL.findall(legend)), available))
    assert sorted(metric for metric in used if metric not in exposition) == []
    missing = {
        metric: sorted(labels - exposition[metric]) for metric, labels in used.items() if labels - exposition[metric]
    }
    assert missing == {}
    assert [(legend, sorted(labels - available)) for legend, labels, available in legends if labels - available] == []
    # The panels: each family below is on the dashboard.
    families = {
        "quotagate_requests_total",
        "quotagate_tokens_total",
        "quotagate_cost_usd_total",
        "quotagate_request_seconds_bucket",
        "quotagate_upstream_seconds_bucket",
        "quotagate_limit_wait_seconds_bucket",
        "quotagate_limit_denials_total",
        "quotagate_breaker_state",
        "quotagate_cache_lookups_total",
        "quotagate_cache_saved_usd_total",
        "quotagate_routed_requests_total",
        "quotagate_downgrades_total",
    }
    assert sorted(families - used.keys()) == []
