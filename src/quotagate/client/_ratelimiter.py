"""A rate limiter for any API, on the gateway's engine.

    limiter = RateLimiter(rpm=500, tpm=120_000)                       # this process
    limiter = RateLimiter(rpm=500, store="redis://127.0.0.1:6379/0")  # shared by every process

    async with limiter.acquire(tokens=1200) as permit:   # waits for capacity (up to max_wait)
        result = await call()
        permit.settle(tokens=result.usage.total_tokens)  # correct the estimate

    with limiter.acquire(tokens=1200):                    # the same, from sync code
        ...

    @limiter.limit(tokens=100)                             # sync or async functions
    def fetch(...): ...

    limiter.remaining()                                    # used / remaining / reset per limit

Request rates (rps, rpm, rph) are paced: up to one second's share may start at once (rpm=600:
10; a rate per second: one at a time), unless ``burst`` says otherwise, and in no window of the
period do more requests start than the limit allows, which is what keeps a program clear of a
provider's 429s. Token rates (tpm, tph) allow a burst of their whole amount, so that one large
request can pass. Per day limits (rpd, tpd) are calendar quotas (midnight in ``timezone``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ..limits import (
    Algorithm,
    Calendar,
    InProcessStore,
    Limit,
    Limiter,
    RedisStore,
    Reservation,
    Store,
    Unit,
    Usage,
    one_second_burst,
)
from ._portal import run_sync

P = ParamSpec("P")
R = TypeVar("R")


class RateLimitTimeout(Exception):
    """Capacity did not come back within ``max_wait``."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTooLarge(RateLimitTimeout):
    """The request is bigger than a limit's whole capacity: it can never pass."""


@dataclass(frozen=True)
class Remaining:
    name: str
    limit: int  # as configured: rpm=500 is 500
    used: int
    remaining: int  # what may start now: a paced rate holds at most `burst` at once
    reset_in: float  # seconds until the limit is whole again (quotas: until the window ends)
    burst: int  # the most that may start at once


_REQUEST_UNITS = (Unit.REQUESTS,)


class RateLimiter:
    def __init__(
        self,
        *,
        rps: int | None = None,
        rpm: int | None = None,
        rph: int | None = None,
        rpd: int | None = None,
        tpm: int | None = None,
        tph: int | None = None,
        tpd: int | None = None,
        concurrency: int | None = None,
        burst: int | None = None,
        name: str = "default",
        store: str | Store = "memory",
        max_wait: float = 60.0,
        timezone: str = "UTC",
        limits: Sequence[Limit] = (),
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        tag = "{" + name.replace("{", "(").replace("}", ")") + "}"
        built: list[Limit] = []
        for label, amount, period in (("rps", rps, 1.0), ("rpm", rpm, 60.0), ("rph", rph, 3600.0)):
            if amount:
                built.append(
                    Limit(
                        f"qgc:{tag}:{label}",
                        Unit.REQUESTS,
                        amount,
                        Algorithm.GCRA,
                        period,
                        burst=min(amount, burst or one_second_burst(amount, period)),
                        label=label.upper(),
                        exact_period=True,
                    )
                )
        for label, amount, period in (("tpm", tpm, 60.0), ("tph", tph, 3600.0)):
            if amount:
                built.append(
                    Limit(f"qgc:{tag}:{label}", Unit.TOKENS, amount, Algorithm.GCRA, period, label=label.upper())
                )
        for label, amount, unit in (("rpd", rpd, Unit.REQUESTS), ("tpd", tpd, Unit.TOKENS)):
            if amount:
                built.append(
                    Limit(
                        f"qgc:{tag}:{label}",
                        unit,
                        amount,
                        Algorithm.CALENDAR,
                        calendar=Calendar.DAY,
                        timezone=timezone,
                        label=label.upper(),
                    )
                )
        if concurrency:
            built.append(
                Limit(
                    f"qgc:{tag}:concurrency",
                    Unit.CONCURRENT,
                    concurrency,
                    Algorithm.CONCURRENCY,
                    label="concurrent requests",
                )
            )
        built.extend(limits)
        if not built:
            raise ValueError("give at least one limit (rpm=, tpm=, ..., or limits=[...])")
        self.limits: tuple[Limit, ...] = tuple(built)
        self.max_wait = max_wait
        self._store_spec = store
        self._clock = clock
        self._sleep = sleep
        # A Redis connection belongs to one event loop; the in-process store is shared by all.
        self._memory = InProcessStore(clock) if clock else InProcessStore()
        self._limiters: dict[int, Limiter] = {}

    @property
    def counts_tokens(self) -> bool:
        return any(limit.unit is Unit.TOKENS for limit in self.limits)

    def _limiter(self) -> Limiter:
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(id(loop))
        if limiter is None:
            store: Store
            if isinstance(self._store_spec, str) and self._store_spec == "memory":
                store = self._memory
            elif isinstance(self._store_spec, str):
                store = RedisStore.from_url(self._store_spec, timeout=5.0, clock=self._clock)
            else:
                store = self._store_spec
            extra: dict[str, Any] = {}
            if self._clock is not None:
                extra["clock"] = self._clock
            if self._sleep is not None:
                extra["sleep"] = self._sleep
            limiter = Limiter(store, timeout=5.0, **extra)
            self._limiters[id(loop)] = limiter
        return limiter

    # -- acquiring ----------------------------------------------------------------------------

    def acquire(self, tokens: int = 0, *, max_wait: float | None = None) -> Permit:
        """A permit for one request of ``tokens`` tokens: use with ``async with`` or ``with``."""
        return Permit(self, tokens, self.max_wait if max_wait is None else max_wait)

    async def _reserve(self, tokens: int, max_wait: float) -> Reservation:
        reservation = await self._limiter().reserve(self.limits, Usage(input_tokens=tokens), max_wait=max_wait)
        decision = reservation.decision
        if decision.allowed:
            return reservation
        status = decision.denied_by
        assert status is not None
        if decision.never_fits:
            raise RequestTooLarge(
                f"{tokens} tokens can never fit {status.limit.label} (limit {status.limit.capacity}).",
                math.inf,
            )
        raise RateLimitTimeout(
            f"{status.limit.label} has no capacity within {max_wait:g}s "
            f"(used {status.used} of {status.limit.capacity}; next in {decision.retry_after:.1f}s).",
            decision.retry_after,
        )

    def limit(self, tokens: int | Callable[..., int] = 0) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function (sync or async) so that each call first acquires a permit."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            def cost(*args: Any, **kwargs: Any) -> int:
                return tokens(*args, **kwargs) if callable(tokens) else tokens

            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    async with self.acquire(cost(*args, **kwargs)):
                        return await func(*args, **kwargs)

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(func)
            def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                with self.acquire(cost(*args, **kwargs)):
                    return func(*args, **kwargs)

            return sync_wrapper

        return decorate

    # -- reading ------------------------------------------------------------------------------

    async def aremaining(self) -> list[Remaining]:
        statuses = await self._limiter().status(self.limits)
        return [
            Remaining(s.limit.label, s.limit.amount, s.used, s.remaining, s.reset_after, s.limit.capacity)
            for s in statuses
        ]

    def remaining(self) -> list[Remaining]:
        """Used / remaining / reset per limit (from sync code; ``aremaining`` from async code)."""
        return run_sync(self.aremaining())


class Permit:
    """One admitted request. ``settle(tokens=...)`` corrects its token estimate."""

    def __init__(self, limiter: RateLimiter, tokens: int, max_wait: float) -> None:
        self._limiter = limiter
        self.tokens = tokens
        self._max_wait = max_wait
        self._reservation: Reservation | None = None
        self._actual: int | None = None
        self.waited = 0.0

    def settle(self, tokens: int) -> None:
        """Record what the request actually used; applied when the permit is released."""
        self._actual = tokens

    async def __aenter__(self) -> Permit:
        started = time.monotonic()
        self._reservation = await self._limiter._reserve(self.tokens, self._max_wait)
        self.waited = time.monotonic() - started
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._reservation is not None
        if self._actual is not None:
            await self._reservation.settle(Usage(input_tokens=self._actual))
        await self._reservation.release()

    def __enter__(self) -> Permit:
        run_sync(self.__aenter__())
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        run_sync(self.__aexit__(kind, exc, tb))
