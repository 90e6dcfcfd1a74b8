"""Deployments as the request path sees them: ids, labels and provider limits."""

from __future__ import annotations

from typing import Any

from quotagate.config import parse_config
from quotagate.upstream import ModelRoutes


def _routes(deployments: list[dict[str, Any]]) -> ModelRoutes:
    return ModelRoutes(parse_config({"models": [{"name": "gpt-4o-mini", "deployments": deployments}]}))


A = {"provider": "openai-compatible", "base_url": "http://a.example/v1", "rpm": 600}
B = {"provider": "openai-compatible", "base_url": "http://b.example/v1", "rpm": 600}


def test_a_deployment_keeps_its_id_and_limits_when_others_move() -> None:
    """Reordered, or with another added before it, a deployment keeps its id and its limits' keys (its breaker and counts)."""
    first = {t.base_url: t for t in _routes([A, B]).deployments("gpt-4o-mini")}
    moved = {
        t.base_url: t for t in _routes([{**A, "base_url": "http://c.example/v1"}, B, A]).deployments("gpt-4o-mini")
    }
    for url, target in first.items():
        assert moved[url].id == target.id
        assert [limit.key for limit in moved[url].limits] == [limit.key for limit in target.limits]
    twice = _routes([A, A]).deployments("gpt-4o-mini")
    assert len({t.id for t in twice}) == 2  # the same endpoint listed twice is two deployments


def test_default_burst_is_one_seconds_share_and_labels_are_unique() -> None:
    """rpm 500 sends 9 at once and holds any 60 s to 500; labels name the model and position."""
    [target] = _routes([{**A, "rpm": 500}]).deployments("gpt-4o-mini")
    [limit] = target.limits
    assert (limit.amount, limit.capacity, limit.exact_period) == (500, 9, True)
    assert target.label == "gpt-4o-mini#0 (openai-compatible/gpt-4o-mini)"
