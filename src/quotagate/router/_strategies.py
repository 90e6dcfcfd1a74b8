"""Routing strategies: in which order a request tries the deployments of one priority group.

A model's ``routing`` names its strategy, one object per model. The router asks it to order a
group of two or more usable deployments, sends the request to the first one whose provider
limits admit it, and tells the strategy which one served, so that a strategy that keeps state
(weighted round-robin's credit) moves on only when a deployment took a request.

The strategies that rank by what this node has seen (``DeploymentStats``) break ties at random,
so that equals share the load.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Protocol

from ..config import ModelConfig
from ..upstream import DeploymentTarget
from ._stats import DeploymentStats


class Strategy(Protocol):
    def order(self, group: list[DeploymentTarget]) -> list[DeploymentTarget]:
        """The deployments of one priority group (two or more), the one to try first first."""
        ...

    def served(self, group: list[DeploymentTarget], chosen: DeploymentTarget) -> None:
        """``chosen``, of ``group``, took the request. (Orders whose deployments all refused
        the request are never reported.)"""
        ...


# The statistics are looked up by deployment id at each request, never kept: a reload hands
# the old router's statistics to the new router's dictionary (see Gateway._reload).
Stats = Mapping[str, DeploymentStats]


class LeastBusy:
    """Fewest requests in flight on this node first."""

    def __init__(self, stats: Stats, rng: random.Random) -> None:
        self._stats = stats
        self._rng = rng

    def order(self, group: list[DeploymentTarget]) -> list[DeploymentTarget]:
        stats, rng = self._stats, self._rng
        return sorted(group, key=lambda t: (stats[t.id].in_flight, rng.random()))

    def served(self, group: list[DeploymentTarget], chosen: DeploymentTarget) -> None:
        pass


class UsageBased:
    """Most headroom left on its provider limits (as their last decision here said) first."""

    def __init__(self, stats: Stats, rng: random.Random) -> None:
        self._stats = stats
        self._rng = rng

    def order(self, group: list[DeploymentTarget]) -> list[DeploymentTarget]:
        stats, rng = self._stats, self._rng
        return sorted(group, key=lambda t: (-stats[t.id].remaining_fraction, rng.random()))

    def served(self, group: list[DeploymentTarget], chosen: DeploymentTarget) -> None:
        pass


class LatencyBased:
    """Lowest latency (a moving average) first; one not measured yet counts as the fastest."""

    def __init__(self, stats: Stats, rng: random.Random) -> None:
        self._stats = stats
        self._rng = rng

    def order(self, group: list[DeploymentTarget]) -> list[DeploymentTarget]:
        stats, rng = self._stats, self._rng
        return sorted(group, key=lambda t: (stats[t.id].latency_ms or 0.0, rng.random()))

    def served(self, group: list[DeploymentTarget], chosen: DeploymentTarget) -> None:
        pass


class Weighted:
    """Smooth weighted round-robin (nginx's), by the deployments' ``weight``.

    Over any run of requests each deployment gets its share to within one request, where a
    weighted random pick drifts by the square root of the count: with two deployments at the
    same provider limits, a random split left one at its limit (requests waiting) while the
    other had room.
    """

    def __init__(self) -> None:
        self._credit: dict[str, float] = {}  # the running credit of each deployment

    def order(self, group: list[DeploymentTarget]) -> list[DeploymentTarget]:
        credit = self._credit
        return sorted(group, key=lambda t: -(credit.get(t.id, 0.0) + t.weight))

    def served(self, group: list[DeploymentTarget], chosen: DeploymentTarget) -> None:
        """The round-robin's step, taken only for a pick that served: every deployment of the
        group gains its weight, and the one chosen pays the group's total."""
        credit = self._credit
        total = 0.0
        for member in group:
            credit[member.id] = credit.get(member.id, 0.0) + member.weight
            total += member.weight
        credit[chosen.id] -= total


_BY_ROUTING: dict[str, Callable[[Stats, random.Random], Strategy]] = {
    "weighted": lambda stats, rng: Weighted(),
    "least-busy": LeastBusy,
    "usage-based": UsageBased,
    "latency-based": LatencyBased,
}


def strategy_for(model: ModelConfig, stats: Stats, rng: random.Random) -> Strategy:
    """A new strategy object for the model's ``routing``."""
    return _BY_ROUTING[model.routing](stats, rng)
