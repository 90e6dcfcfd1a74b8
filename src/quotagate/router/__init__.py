"""Routing: choosing deployments, provider limits, retries, circuit breakers, fallbacks."""

from ._attempt import Exchange
from ._capacity import CapacityError
from ._provider_headers import parse_duration
from ._request import RouteRequest
from ._router import Router
from ._state import STATE_NAMES, DeploymentStates, MemoryStateStore, RedisStateStore
from ._stats import DeploymentStats

__all__ = [
    "STATE_NAMES",
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
