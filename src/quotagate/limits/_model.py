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
        static: tuple[str, float, float, float, float] | None = None
        if self.algorithm is Algorithm.GCRA:
            interval = self.period * 1000.0 / self.amount
            static = ("g", interval, interval * (self.burst or self.amount), 0.0, 0.0)
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
