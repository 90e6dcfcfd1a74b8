"""A request's own say over the cache: the ``Cache-Control`` header, a TTL header, and the body's
``cache`` object as LiteLLM clients send it.

    Cache-Control: no-cache            answer from the provider, not the cache (the answer is stored)
    Cache-Control: no-store            do not store this answer
    x-quotagate-cache-ttl: 600         keep this answer 600 s instead of the rule's TTL
    Cache-Control: max-age=60          accept a cached answer at most 60 s old
    {"cache": {"no-cache": true, "no-store": true, "ttl": 600, "s-maxage": 60}}   the same, in the body

A control can only narrow what the configuration allows: it turns lookups or storing off, or
shortens what is accepted; it never widens a namespace or turns on a cache a rule turns off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError

# The longest TTL a request may ask for: a year, as the configuration's rules allow.
MAX_TTL = 365 * 86400.0


@dataclass(frozen=True, slots=True)
class CacheControls:
    lookup: bool = True  # False: no-cache
    store: bool = True  # False: no-store
    ttl: float | None = None  # seconds to keep this answer (None: the rule's)
    max_age: float | None = None  # the oldest cached answer accepted, in seconds (None: any)


DEFAULT = CacheControls()


def _seconds(value: Any, what: str, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequestError(f"{what} must be a number of seconds.", param=param)
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidRequestError(f"{what} must be a number of seconds, got {value!r}.", param=param) from None
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_TTL:
        raise InvalidRequestError(f"{what} must be between 0 and {MAX_TTL:.0f} seconds.", param=param)
    return seconds


def read_controls(cache_control: str | None, ttl_header: str | None, body: dict[str, Any]) -> CacheControls:
    """The controls a request sets; InvalidRequestError (400) for one it sets wrongly."""
    body_controls = body.get("cache")
    if cache_control is None and ttl_header is None and body_controls is None:
        return DEFAULT
    lookup = store = True
    ttl = max_age = None
    if cache_control is not None:
        for directive in cache_control.split(","):
            name, _, value = directive.strip().partition("=")
            name = name.strip().lower()
            if name == "no-cache":
                lookup = False
            elif name == "no-store":
                store = False
            elif name in ("max-age", "s-maxage"):
                max_age = _seconds(value.strip(), f"Cache-Control {name}", "cache")
            # Other directives (private, must-revalidate ...) mean nothing to a gateway's cache.
    if ttl_header is not None:
        ttl = _seconds(ttl_header.strip(), "x-quotagate-cache-ttl", "cache")
    if body_controls is not None:
        if not isinstance(body_controls, dict):
            raise InvalidRequestError('cache must be an object such as {"no-cache": true}.', param="cache")
        if body_controls.get("no-cache") is True:
            lookup = False
        if body_controls.get("no-store") is True:
            store = False
        if body_controls.get("ttl") is not None:
            ttl = _seconds(body_controls["ttl"], "cache.ttl", "cache.ttl")
        if body_controls.get("s-maxage") is not None:
            max_age = _seconds(body_controls["s-maxage"], "cache.s-maxage", "cache.s-maxage")
    return CacheControls(lookup, store, ttl, max_age)
