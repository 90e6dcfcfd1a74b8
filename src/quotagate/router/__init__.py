"""Routing: choosing deployments, provider limits, retries, circuit breakers, fallbacks."""

from ._router import CapacityError, DeploymentStats, Exchange, Router, RouteRequest, parse_duration
from ._state import DeploymentStates, MemoryStateStore, RedisStateStore

__all__ = [
    "CapacityError",
    "DeploymentStates",
    "DeploymentStats",
    "Exchange",
    "MemoryStateStore",
    "RedisStateStore",
    "RouteRequest",
    "Router",
    "parse_duration",
]
