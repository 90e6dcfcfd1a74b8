"""What a limit is, and what a decision says.

A ``Limit`` is a definition bound to a storage key: "60 requests per minute for key K" is one
limit. Scopes (key, user, tier, model, key+model, global) are nothing but different keys; the
engine never needs to know which scope a key stands for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Unit(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"
    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"
    CONCURRENT = "concurrent"
    SPEND = "spend"  # micro-dollars: budgets are limits like any other


def one_second_burst(amount: int, period: float) -> int:
    """The default burst of a paced request rate: one second's share of ``amount`` per ``period``.

    Providers enforce their per-minute limits over sub-minute periods (OpenAI documents 60,000
    RPM as 1,000 per second), so one second's share may go out at once. A rate per second or
    shorter has no such share to give: it is paced one at a time.
    """
    if period <= 1.0:
        return 1
    return max(1, min(amount, math.ceil(amount / period)))


class Algorithm(StrEnum):
    GCRA = "gcra"  # token bucket as a generic cell rate algorithm
    SLIDING_WINDOW = "sliding-window"  # two-counter sliding window
    CALENDAR = "calendar"  # a quota over a calendar day or month in a time zone
    CONCURRENCY = "concurrency"  # in-flight leases that expire by themselves


class Calendar(StrEnum):
    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit on one key.

    ``amount`` per ``period`` seconds (rates), per ``calendar`` window (quotas), or in flight at
    once (concurrency). ``burst`` is GCRA's bucket size (default: ``amount``). ``label`` names the
    limit to people ("requests per minute (RPM)").

    A GCRA admits at most ``burst`` plus its rate times a window in any window, so a bucket that
    refills at ``amount`` per ``period`` can admit ``amount + burst - 1`` in one period. With
    ``exact_period`` its rate is lowered to ``amount - burst + 1`` per period instead: no window of
    ``period`` ever holds more than ``amount``, bursts included (a provider's RPM, paced).
    """

    key: str
    unit: Unit
    amount: int
    algorithm: Algorithm = Algorithm.GCRA
    period: float = 60.0
    burst: int | None = None
    calendar: Calendar | None = None
    timezone: str = "UTC"
    lease_seconds: float = 60.0
    label: str = ""
    scope: str = ""
    exact_period: bool = False
    # The numbers the stores compute with (see _params.params), worked out once per limit
    # rather than on every decision; None for calendar quotas, whose window moves.
    static_params: tuple[str, float, float, float, float] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    # The most a single decision could ever be granted: GCRA's burst where one is set, else the
    # amount. Worked out once (it is read for every response's x-ratelimit-* headers).
    capacity: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError(f"limit {self.key}: amount must be positive, got {self.amount}")
        if self.algorithm in (Algorithm.GCRA, Algorithm.SLIDING_WINDOW) and self.period <= 0:
            raise ValueError(f"limit {self.key}: period must be positive")
        if self.algorithm is Algorithm.CALENDAR and self.calendar is None:
            raise ValueError(f"limit {self.key}: a calendar quota needs calendar=day or month")
        if self.burst is not None and self.burst <= 0:
            raise ValueError(f"limit {self.key}: burst must be positive")
        burst = self.burst or self.amount
        if self.exact_period and burst > self.amount:
            raise ValueError(f"limit {self.key}: a burst above the amount cannot hold to the period")
        static: tuple[str, float, float, float, float] | None = None
        if self.algorithm is Algorithm.GCRA:
            per_period = self.amount - burst + 1 if self.exact_period else self.amount
            interval = self.period * 1000.0 / per_period
            static = ("g", interval, interval * burst, 0.0, 0.0)
        elif self.algorithm is Algorithm.SLIDING_WINDOW:
            static = ("s", self.period * 1000.0, float(self.amount), 0.0, 0.0)
        elif self.algorithm is Algorithm.CONCURRENCY:
            static = ("n", float(self.amount), self.lease_seconds * 1000.0, 0.0, 0.0)
        object.__setattr__(self, "static_params", static)
        capacity = self.burst if self.algorithm is Algorithm.GCRA and self.burst is not None else self.amount
        object.__setattr__(self, "capacity", capacity)

    @property
    def is_quota(self) -> bool:
        return self.algorithm is Algorithm.CALENDAR


# Results are plain (not frozen) dataclasses: they are made on every request, and a frozen
# dataclass sets each field through object.__setattr__, several times slower. Treat them as
# read-only.
@dataclass(slots=True)
class LimitStatus:
    """A limit's state as the decision left it (or found it, when it denied)."""

    limit: Limit
    used: int
    remaining: int
    reset_after: float  # seconds until the limit is whole again (quotas: until the window ends)
    window: float = 0.0  # calendar quotas: the window's start (epoch seconds) the charge went to


@dataclass(slots=True)
class Decision:
    allowed: bool
    statuses: tuple[LimitStatus, ...]
    # When denied: the limit that decided it, and how long until it would admit the request
    # (math.inf when the request is bigger than the limit's whole capacity).
    denied_by: LimitStatus | None = None
    retry_after: float = 0.0
    lease: str | None = None
    costs: tuple[int, ...] = field(default=())
    # True when the shared store was down and this node's local share decided.
    fallback: bool = False

    @property
    def never_fits(self) -> bool:
        return not self.allowed and math.isinf(self.retry_after)
