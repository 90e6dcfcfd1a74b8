"""What a provider's answer says about its own rate limits: how long to wait (Retry-After, the
x-ratelimit-reset-* durations, Anthropic's anthropic-ratelimit-*-reset times), and whether a limit
has nothing left."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import datetime

# Each provider limit's "remaining" header, and the header saying when it resets.
_PROVIDER_RATELIMIT_HEADERS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
)
# Anthropic's, whose resets are RFC 3339 times ("2026-12-05T04:30:12Z"), not durations.
_ANTHROPIC_RATELIMIT_HEADERS = (
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration ("1s", "6m0s", "20ms") or a plain number of seconds."""
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, matched = 0.0, False
    for number, unit in _DURATION_PART.findall(text):
        matched = True
        total += float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if matched else None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds a provider asks a client to wait (retry-after-ms, else retry-after), if any."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


MAX_RESET_SECONDS = 60.0


def seconds_until(text: str | None, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) to an RFC 3339 time; None if it has passed or is no such time."""
    if not text:
        return None
    try:
        # RFC 3339 allows a lower-case "t" and "z", which fromisoformat does not.
        when = datetime.fromisoformat(text.upper())
    except ValueError:
        return None
    if when.tzinfo is None:
        # Not RFC 3339 (which requires an offset), and as local time it could be hours off.
        return None
    left = when.timestamp() - now
    # A time, not a duration: read by this host's clock, which may be off. Anthropic's limits
    # replenish within a minute, so a reset further off than that is a clock's error, not a wait.
    return min(left, MAX_RESET_SECONDS) if left > 0 else None


def reset_wait(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds until the provider's request limit resets, for a 429 that says nothing of when
    to retry: x-ratelimit-reset-requests, else anthropic-ratelimit-requests-reset."""
    wait = parse_duration(headers.get("x-ratelimit-reset-requests"))
    if wait is None:
        reset_at = headers.get("anthropic-ratelimit-requests-reset")
        if reset_at:
            wait = seconds_until(reset_at, time.time() if now is None else now)
    return wait


def exhausted_resets(headers: Mapping[str, str], *, now: float | None = None) -> list[float]:
    """Seconds until each limit that the provider says has nothing left resets (where it says
    when): usually none. ``now`` (Unix time) is the clock Anthropic's reset times are read by."""
    resets = []
    for remaining, reset_at in _PROVIDER_RATELIMIT_HEADERS:
        if headers.get(remaining) == "0":
            reset = parse_duration(headers.get(reset_at))
            if reset:
                resets.append(reset)
    # Anthropic sends all four limits' headers together, so one lookup tells whether to read
    # them: an answer from anyone else costs that lookup, not four. Were the requests limit's
    # missing, an exhausted limit would go unseen until its 429, which cools down by retry-after.
    if "anthropic-ratelimit-requests-remaining" in headers:
        for remaining, reset_at in _ANTHROPIC_RATELIMIT_HEADERS:
            if headers.get(remaining) == "0":
                if now is None:
                    now = time.time()
                reset = seconds_until(headers.get(reset_at), now)
                if reset:
                    resets.append(reset)
    return resets
