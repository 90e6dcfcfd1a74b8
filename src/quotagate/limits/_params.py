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


# A calendar Limit's key -> (the Limit, its window's start and end in epoch seconds, its
# parameters): they hold for the whole window, and are asked for on every decision and settle.
_calendar_params: dict[str, tuple[Limit, float, float, tuple[str, float, float, float, float]]] = {}


def params(limit: Limit, now: float) -> tuple[str, float, float, float, float]:
    """(code, a, b, c, d) for ``limit`` at ``now`` (epoch seconds); see lua/acquire.lua.

    g (gcra): a = ms per unit, b = tolerance; s (sliding window): a = period ms, b = amount;
    n (concurrency): a = amount, b = lease ms (all fixed: Limit.static_params); c (calendar):
    a = amount, b = window start, c = window end, d = the next window's end (ms).
    """
    static = limit.static_params
    if static is not None:
        return static
    cached = _calendar_params.get(limit.key)
    # The entry is for this very definition (a reload may have changed the amount behind a key).
    if cached is not None and (cached[0] is limit or cached[0] == limit) and cached[1] <= now < cached[2]:
        return cached[3]
    assert limit.calendar is not None
    start, end, after = calendar_bounds(limit.calendar, limit.timezone, now)
    found = ("c", float(limit.amount), start * 1000.0, end * 1000.0, after * 1000.0)
    if len(_calendar_params) >= 50_000:
        _calendar_params.clear()
    _calendar_params[limit.key] = (limit, start, end, found)
    return found


def make_decision(
    limits: Sequence[Limit],
    costs: Sequence[int],
    outcomes: Sequence[Outcome],
    lease: str | None,
) -> Decision:
    """The decision over ``limits`` from each one's outcome (see _algorithms.Outcome)."""
    for outcome in outcomes:
        if not outcome[0]:
            return _denied(limits, costs, outcomes)
    # The common case, kept lean: it runs on every request.
    statuses = []
    for index, (_, _, _, used, remaining, reset_ms, window_ms) in enumerate(outcomes):
        statuses.append(
            LimitStatus(limits[index], used, remaining, reset_ms / 1000.0 if reset_ms > 0 else 0.0, window_ms / 1000.0)
        )
    return Decision(True, tuple(statuses), None, 0.0, lease, tuple(costs))


def _denied(limits: Sequence[Limit], costs: Sequence[int], outcomes: Sequence[Outcome]) -> Decision:
    statuses = []
    for limit, cost, (ok, _, _, used, remaining, reset_ms, window_ms) in zip(limits, costs, outcomes, strict=True):
        if ok and cost:
            # This limit would have taken the request, but another refused it: nothing was
            # charged, so report the limit as it stands.
            used, remaining = max(0, used - cost), min(limit.capacity, remaining + cost)
        statuses.append(LimitStatus(limit, used, remaining, max(0.0, reset_ms) / 1000.0, window_ms / 1000.0))
    denied_index = -1
    worst = -1.0
    for index, (ok, retry_ms, *_) in enumerate(outcomes):
        if not ok and retry_ms > worst:
            denied_index, worst = index, retry_ms
    retry = math.inf if math.isinf(worst) else max(0.0, worst) / 1000.0
    return Decision(False, tuple(statuses), statuses[denied_index], retry, costs=tuple(costs))
