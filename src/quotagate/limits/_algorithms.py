"""The four algorithms, as pure functions over a limit's state.

This module is the reference: the in-process store runs it directly and ``lua/acquire.lua``
is a line-by-line transcription (the parametrized tests run both against the same table).
Times are milliseconds, as in the Lua script, so both round the same way.

Each limit keeps constant state, whatever the traffic:

    gcra            tat                      the theoretical arrival time
    sliding-window  (window, current, prev)  two fixed-window counters, weighted
    calendar        (window start, used)     one counter per calendar window
    concurrency     {lease: expiry}          at most ``amount`` leases
"""

from __future__ import annotations

import math

EPS = 1e-6
# Comparisons of times: "now" is epoch milliseconds (~1.7e12), where floats are 2.4e-4 ms apart,
# so EPS is lost in the rounding and a bucket that exactly fits would refuse (every request of an
# rpm above 60,000 with burst 1 was: its interval is below 1 ms). A GCRA allows one microsecond,
# plus one float spacing per unit in its bucket: a full bucket added up one unit at a time can be
# that far from burst x interval (the 10th of a burst of 10 was refused). Never half an interval
# or more: the allowance must not admit a unit of its own (a bucket of 10,000,000 tokens would
# have let 6 % more through).
TIME_EPS = 1e-3
SPACING = 2.3e-16  # a float's relative spacing, rounded up (2**-52)
NEVER = math.inf
# A denied concurrent request cannot know when a slot frees; it looks again within this time.
CONCURRENCY_RETRY_MS = 250.0

# What each algorithm returns, as the Lua script's per-limit reply does: a plain tuple
#   (ok, retry_ms, state, used, remaining, reset_ms, window_ms)
# ok: admitted; retry_ms: when not ok, how long until it would be (NEVER when the cost exceeds the
# whole capacity); state: what to store when the whole decision admits; window_ms: calendar quotas'
# window start. A tuple rather than a class: one is made per limit per request, and building an
# object with an __init__ costs many times a tuple. For the same reason the hot paths spell
# min/max as conditionals: the builtins parse their arguments as keywords and cost several times
# more (figures in bench/NOTES.md).
Outcome = tuple[bool, float, object, int, int, float, float]


def gcra(tat: float | None, now: float, cost: float, interval: float, tolerance: float) -> Outcome:
    """interval = period / amount (ms per unit); tolerance = burst x interval."""
    base = now if tat is None or tat < now else tat
    new_tat = base + cost * interval
    capacity = math.floor(tolerance / interval + 0.5)
    slack = TIME_EPS + capacity * now * SPACING
    if slack >= interval * 0.5:
        slack = interval * 0.5
    if cost * interval > tolerance + slack:
        ok, retry, after = False, NEVER, base
    elif new_tat - now <= tolerance + slack:
        ok, retry, after = True, 0.0, new_tat
    else:
        ok, retry, after = False, new_tat - tolerance - now, base
    remaining = math.floor((tolerance - (after - now) + slack) / interval)
    if remaining < 0:
        remaining = 0
    elif remaining > capacity:
        remaining = capacity
    return ok, retry, after, capacity - remaining, remaining, after - now, 0.0


def gcra_adjust(tat: float | None, now: float, delta: float, interval: float) -> float:
    base = now if tat is None or tat < now else tat
    adjusted = base + delta * interval
    return adjusted if adjusted > now else now


def _sliding_counts(state: tuple[float, float, float] | None, window: float) -> tuple[float, float]:
    if state is None:
        return 0.0, 0.0
    stored_window, current, previous = state
    if stored_window == window:
        return current, previous
    if stored_window == window - 1:
        return 0.0, current
    return 0.0, 0.0


def sliding_window(
    state: tuple[float, float, float] | None, now: float, cost: float, period: float, amount: float
) -> Outcome:
    window = math.floor(now / period)
    current, previous = _sliding_counts(state, window)
    weight = 1.0 - (now - window * period) / period
    estimate = previous * weight + current
    if cost > amount + EPS:
        ok, retry = False, NEVER
    elif estimate + cost <= amount + EPS:
        ok, retry = True, 0.0
        current += cost
    else:
        ok = False
        room = amount - cost
        if current <= room:
            # The previous window's share has to fade: previous x (1 - f) + current <= room.
            fraction = 1.0 - (room - current) / previous
            retry = window * period + fraction * period - now
        else:
            # Only in the next window, once this window's count fades far enough.
            fraction = 1.0 - room / current
            retry = (window + 1) * period + fraction * period - now
    estimate = previous * weight + current
    remaining = max(0, math.floor(amount - estimate + EPS))
    if current > 0:
        reset = (window + 2) * period - now
    elif previous > 0:
        reset = (window + 1) * period - now
    else:
        reset = 0.0
    used = max(0, math.ceil(estimate - EPS))
    return ok, retry, (window, current, previous), used, remaining, reset, 0.0


def sliding_adjust(
    state: tuple[float, float, float] | None, now: float, delta: float, period: float
) -> tuple[float, float, float]:
    window = math.floor(now / period)
    current, previous = _sliding_counts(state, window)
    current += delta
    if current < 0:
        # A refund larger than this window's count comes out of the previous window's.
        previous = max(0.0, previous + current)
        current = 0.0
    return (window, current, previous)


def calendar(
    state: tuple[float, float] | None,
    now: float,
    cost: float,
    amount: float,
    start: float,
    end: float,
    after: float,
) -> Outcome:
    if now >= end:
        start, end = end, after
    used = state[1] if state is not None and state[0] == start else 0.0
    if cost > amount + EPS:
        ok, retry = False, NEVER
    elif used + cost <= amount + EPS:
        ok, retry = True, 0.0
        used += cost
    else:
        ok, retry = False, end - now
    remaining = int(amount - used)
    return ok, retry, (start, used), int(used), remaining if remaining > 0 else 0, end - now, start


def calendar_adjust(
    state: tuple[float, float] | None,
    now: float,
    delta: float,
    charged_window: float,
    start: float,
    end: float,
) -> tuple[float, float] | None:
    if now >= end:
        start = end
    if state is not None and state[0] == charged_window:
        return (state[0], max(0.0, state[1] + delta))
    if delta <= 0:
        # A refund for a window that has closed: that window is history.
        return state
    # The request straddled the boundary: what it used beyond the estimate counts now.
    used = state[1] if state is not None and state[0] == start else 0.0
    return (start, used + delta)


def concurrency(
    leases: dict[str, float] | None, now: float, cost: float, amount: float, lease_ms: float, lease: str
) -> Outcome:
    live = {k: v for k, v in (leases or {}).items() if v > now}
    if cost > amount:
        ok, retry = False, NEVER
    elif len(live) + cost <= amount:
        ok, retry = True, 0.0
        if cost:
            live[lease] = now + lease_ms
    else:
        ok, retry = False, min(min(live.values()) - now, CONCURRENCY_RETRY_MS)
    reset = (min(live.values()) - now) if live else 0.0
    return ok, retry, live, len(live), max(0, int(amount) - len(live)), reset, 0.0
