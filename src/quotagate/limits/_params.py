"""Turning a Limit into the numbers both stores compute with (milliseconds)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._algorithms import Outcome
from ._calendar import window_bounds
from ._model import Calendar, Decision, Limit, LimitStatus

_bounds_cache: dict[tuple[Calendar, str], tuple[float, float, float]] = {}


def calendar_bounds(calendar: Calendar, timezone: str, now: float) -> tuple[float, float, float]:
    """(start, end, after) in epoch seconds; cached until the window ends."""
    cached = _bounds_cache.get((calendar, timezone))
    if cached is not None and cached[0] <= now < cached[1]:
        return cached
    bounds = window_bounds(now, calendar, timezone)
    _bounds_cache[(calendar, timezone)] = bounds
    return bounds


def params(limit: Limit, now: float) -> tuple[str, float, float, float, float]:
    """(code, a, b, c, d) for ``limit`` at ``now`` (epoch seconds); see lua/acquire.lua.

    g (gcra): a = ms per unit, b = tolerance; s (sliding window): a = period ms, b = amount;
    n (concurrency): a = amount, b = lease ms (all fixed: Limit.static_params); c (calendar):
    a = amount, b = window start, c = window end, d = the next window's end (ms).
    """
    static = limit.static_params
    if static is not None:
        return static
    assert limit.calendar is not None
    start, end, after = calendar_bounds(limit.calendar, limit.timezone, now)
    return "c", float(limit.amount), start * 1000.0, end * 1000.0, after * 1000.0


def make_decision(
    limits: Sequence[Limit],
    costs: Sequence[int],
    outcomes: Sequence[Outcome],
    lease: str | None,
) -> Decision:
    allowed = True
    for o in outcomes:
        if not o.ok:
            allowed = False
            break
    if allowed:
        # The common case, kept lean: it runs on every request.
        return Decision(
            True,
            tuple(
                [
                    LimitStatus(limit, o.used, o.remaining, max(0.0, o.reset_ms) / 1000.0, o.window_ms / 1000.0)
                    for limit, o in zip(limits, outcomes, strict=True)
                ]
            ),
            lease=lease,
            costs=tuple(costs),
        )
    statuses = []
    for limit, cost, o in zip(limits, costs, outcomes, strict=True):
        used, remaining = o.used, o.remaining
        if o.ok and cost:
            # This limit would have taken the request, but another refused it: nothing was
            # charged, so report the limit as it stands.
            used, remaining = max(0, used - cost), min(limit.capacity, remaining + cost)
        statuses.append(LimitStatus(limit, used, remaining, max(0.0, o.reset_ms) / 1000.0, o.window_ms / 1000.0))
    denied_index = -1
    worst = -1.0
    for index, outcome in enumerate(outcomes):
        if not outcome.ok and outcome.retry_ms > worst:
            denied_index, worst = index, outcome.retry_ms
    retry = math.inf if math.isinf(worst) else max(0.0, worst) / 1000.0
    return Decision(False, tuple(statuses), statuses[denied_index], retry, costs=tuple(costs))
