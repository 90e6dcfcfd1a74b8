"""What a provider's answer says about its own rate limits: how long to wait (Retry-After, the
x-ratelimit-reset-* durations), and whether a limit has nothing left."""

from __future__ import annotations

import re
from collections.abc import Mapping

# Each provider limit's "remaining" header, and the header saying when it resets.
_PROVIDER_RATELIMIT_HEADERS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
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


def exhausted_resets(headers: Mapping[str, str]) -> list[float]:
    """Seconds until each limit that the provider says has nothing left resets (where it says
    when): usually none."""
    resets = []
    for remaining, reset_at in _PROVIDER_RATELIMIT_HEADERS:
        if headers.get(remaining) == "0":
            reset = parse_duration(headers.get(reset_at))
            if reset:
                resets.append(reset)
    return resets
