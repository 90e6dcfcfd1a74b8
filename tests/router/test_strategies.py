"""The routing strategies on their own: how each orders a priority group, given what this node
has seen of its deployments, and what weighted round-robin makes of the picks that served."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from quotagate.config import parse_config
from quotagate.router import DeploymentStats
from quotagate.router._strategies import LatencyBased, LeastBusy, UsageBased, Weighted, strategy_for
from quotagate.upstream import DeploymentTarget


def target(name: str, weight: float = 1.0) -> DeploymentTarget:
    return DeploymentTarget(
        id=name,
        model="m",
        provider_model=name,
        provider="openai-compatible",
        base_url=f"http://{name}.test/v1",
        headers={},
        weight=weight,
        priority=0,
        connect_timeout=1.0,
        first_byte_timeout=1.0,
        chunk_timeout=1.0,
        total_timeout=None,
        label=name,
    )


def names(group: list[DeploymentTarget]) -> list[str]:
    return [t.id for t in group]


GROUP = [target("a"), target("b"), target("c")]


def test_least_busy_puts_fewest_in_flight_first() -> None:
    """Least-busy orders by requests in flight on this node, fewest first."""
    stats = {"a": DeploymentStats(in_flight=5), "b": DeploymentStats(in_flight=0), "c": DeploymentStats(in_flight=2)}
    assert names(LeastBusy(stats, random.Random(0)).order(GROUP)) == ["b", "c", "a"]


def test_usage_based_puts_most_headroom_first() -> None:
    """Usage-based orders by the headroom left on provider limits, most first."""
    stats = {
        "a": DeploymentStats(remaining_fraction=0.5),
        "b": DeploymentStats(remaining_fraction=0.1),
        "c": DeploymentStats(remaining_fraction=0.9),
    }
    assert names(UsageBased(stats, random.Random(0)).order(GROUP)) == ["c", "a", "b"]


def test_latency_based_puts_fastest_first_and_the_unmeasured_before_all() -> None:
    """Latency-based orders by latency, lowest first; a deployment not measured yet goes first,
    so that it gets measured."""
    stats = {"a": DeploymentStats(latency_ms=300.0), "b": DeploymentStats(latency_ms=80.0), "c": DeploymentStats()}
    assert names(LatencyBased(stats, random.Random(0)).order(GROUP)) == ["c", "b", "a"]


@pytest.mark.parametrize("kind", [LeastBusy, UsageBased, LatencyBased])
def test_ties_are_broken_at_random(kind: type[LeastBusy | UsageBased | LatencyBased]) -> None:
    """Deployments that the stats cannot tell apart each come first about as often."""
    stats = {name: DeploymentStats() for name in names(GROUP)}
    strategy = kind(stats, random.Random(0))
    firsts = Counter(strategy.order(GROUP)[0].id for _ in range(600))
    assert set(firsts) == {"a", "b", "c"}
    assert all(count > 150 for count in firsts.values())


def test_stats_are_read_at_each_order() -> None:
    """A strategy sees a deployment's statistics as they are now, also when its entry was replaced
    (a reload hands the old router's statistics to the new router)."""
    stats = {"a": DeploymentStats(in_flight=0), "b": DeploymentStats(in_flight=3)}
    strategy = LeastBusy(stats, random.Random(0))
    assert names(strategy.order(GROUP[:2])) == ["a", "b"]
    stats["a"] = DeploymentStats(in_flight=9)
    assert names(strategy.order(GROUP[:2])) == ["b", "a"]


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param([1.0, 1.0], id="1:1"),
        pytest.param([3.0, 1.0], id="3:1"),
        pytest.param([5.0, 1.0, 1.0], id="5:1:1"),
        pytest.param([5.0, 3.0, 1.0], id="5:3:1"),
        pytest.param([0.5, 1.5, 2.0, 0.1], id="fractional"),
        pytest.param([10.0, 1.0, 3.0, 10.0, 5.0], id="five"),
    ],
)
def test_weighted_share_stays_within_one_request_of_the_weights(weights: list[float]) -> None:
    """Smooth weighted round-robin: after any number of picks, each deployment has served its
    weight's share of them to within one request."""
    group = [target(f"d{i}", weight) for i, weight in enumerate(weights)]
    total = sum(weights)
    strategy = Weighted()
    served: Counter[str] = Counter()
    for picks in range(1, 201):
        chosen = strategy.order(group)[0]
        strategy.served(group, chosen)
        served[chosen.id] += 1
        for member in group:
            assert abs(served[member.id] - picks * member.weight / total) <= 1.0 + 1e-9, (picks, dict(served))


def test_weighted_moves_on_only_when_told_which_served() -> None:
    """Orders whose deployments all refused the request (never reported as served) leave the
    round-robin where it was; a pick that served moves it on."""
    group = [target("a", 2.0), target("b", 1.0)]
    strategy = Weighted()
    assert names(strategy.order(group)) == ["a", "b"]
    assert names(strategy.order(group)) == ["a", "b"]
    strategy.served(group, group[0])
    strategy.served(group, group[0])
    assert names(strategy.order(group)) == ["b", "a"]


def test_weighted_credit_follows_the_one_that_served_not_the_first_in_order() -> None:
    """When the first in order had no room and the second served, the second pays for the pick."""
    group = [target("a"), target("b")]
    strategy = Weighted()
    assert names(strategy.order(group)) == ["a", "b"]
    strategy.served(group, group[1])  # a's provider limits refused: b served
    assert names(strategy.order(group)) == ["a", "b"]  # a's turn is still to come


@pytest.mark.parametrize(
    ("routing", "kind"),
    [
        ({}, Weighted),
        ({"routing": "weighted"}, Weighted),
        ({"routing": "least-busy"}, LeastBusy),
        ({"routing": "usage-based"}, UsageBased),
        ({"routing": "latency-based"}, LatencyBased),
    ],
)
def test_a_model_gets_the_strategy_its_routing_names(routing: dict[str, str], kind: type) -> None:
    """A model's ``routing`` picks its strategy; without one, weighted round-robin."""
    deployment = {"provider": "openai-compatible", "base_url": "http://a.test/v1", "model": "a"}
    config = parse_config({"models": [{"name": "m", "deployments": [deployment], **routing}]})
    assert isinstance(strategy_for(config.models[0], {}, random.Random(0)), kind)
