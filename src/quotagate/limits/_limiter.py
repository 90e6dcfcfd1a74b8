"""The limiter: a store plus what a server needs around it.

- Every store call has a tight deadline. When the shared store fails, the limiter either fails
  closed (``StoreUnavailableError``, a 503 for the client) or fails open onto an in-process
  store holding this node's share of each limit. After ``failures_to_trip`` failures in a row
  it leaves the shared store alone for ``retry_interval`` seconds (requests go straight to the
  failure policy, without waiting on a dead store), then tries it again: it recovers by itself.
- Concurrency leases are renewed in the background while held, so a long stream keeps its slot
  and a dead node's slots expire after ``lease_seconds``.
- Traffic shaping: a denied request may wait for capacity, up to ``max_wait`` seconds, in a
  bounded queue. Waiters line up behind the limit that refused them, highest priority first,
  first come first served within a priority. Only the head of each line asks the store again,
  and only when the store said capacity would be back: nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from .._logging import EveryFewSeconds
from ..redis import RedisReplyError
from ._memory import InProcessStore
from ._model import Algorithm, Decision, Limit, LimitStatus
from ._queue import WaitQueue
from ._reservation import Reservation
from ._store import Store
from ._usage import Usage, costs_on

logger = logging.getLogger("quotagate.limits")
T = TypeVar("T")


class StoreUnavailableError(Exception):
    """The shared store did not answer in time and the limiter is set to fail closed."""


def _is_store_failure(exc: Exception) -> bool:
    """An error of the store or of the way to it, not a bug of ours."""
    if isinstance(exc, OSError | TimeoutError | ConnectionError | RedisReplyError):
        return True
    # redis-py's errors (ConnectionError, BusyLoadingError, ...) have their own hierarchy.
    return type(exc).__module__.startswith("redis")


@dataclass
class LimiterStats:
    store_errors: int = 0
    fallback_decisions: int = 0
    waited: int = 0
    wait_timeouts: int = 0
    queue_full: int = 0


class Limiter:
    def __init__(
        self,
        store: Store,
        *,
        timeout: float = 0.25,
        on_store_failure: Literal["closed", "open"] = "closed",
        fallback_share: float = 1.0,
        retry_interval: float = 1.0,
        failures_to_trip: int = 3,
        max_queue: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < fallback_share <= 1:
            raise ValueError("fallback_share must be in (0, 1]")
        self.store = store
        self.timeout = timeout
        self.on_store_failure = on_store_failure
        self.fallback_share = fallback_share
        self.retry_interval = retry_interval
        self.failures_to_trip = failures_to_trip
        self._consecutive_failures = 0
        self.queue = WaitQueue(max_queue, clock)
        self.stats = LimiterStats()
        self._clock = clock
        self._sleep = sleep
        self._fallback = InProcessStore()
        # An in-process store answers at once and cannot fail: no deadline, no failure policy,
        # and no coroutine per call (this is the embedded default's hot path). Only the class
        # itself: a subclass may redefine what acquiring means.
        self._direct = store if type(store) is InProcessStore else None
        # A store whose calls carry their own deadline, no longer than ours, needs no timer per call.
        store_timeout = getattr(store, "call_timeout", None)
        self._store_bounded = store_timeout is not None and store_timeout <= timeout
        self._scaled: dict[Limit, Limit] = {}
        self._down_until = 0.0
        self._leases: dict[str, tuple[Sequence[Limit], bool]] = {}
        self._renewer: asyncio.Task[None] | None = None
        # While the store is down these would fire per request (or per lease): a line now and
        # then, with a count of the rest, says as much.
        self._log_tripped = EveryFewSeconds(logger, clock=clock)
        self._log_settle = EveryFewSeconds(logger, clock=clock)
        self._log_release = EveryFewSeconds(logger, clock=clock)
        self._log_renew = EveryFewSeconds(logger, clock=clock)

    # -- the shared store, guarded -------------------------------------------------------------

    async def _guarded(
        self, call: Callable[[Store], Awaitable[T]], fallback: Callable[[Store], Awaitable[T]]
    ) -> tuple[T, bool]:
        """Run ``call`` on the shared store, or ``fallback`` on the local one; (result, fell back)."""
        if self._clock() >= self._down_until:
            try:
                if self._store_bounded:
                    result = await call(self.store)
                else:
                    async with asyncio.timeout(self.timeout):
                        result = await call(self.store)
                self._consecutive_failures = 0
                return result, False
            except Exception as exc:
                if not _is_store_failure(exc):
                    raise
                self._store_failed(exc)
        return await self._failover(fallback), True

    async def _failover(self, fallback: Callable[[Store], Awaitable[T]]) -> T:
        """The failure policy: refuse (closed), or decide on this node's share of each limit (open)."""
        if self.on_store_failure == "closed":
            raise StoreUnavailableError("the rate limit store is unavailable")
        self.stats.fallback_decisions += 1
        return await fallback(self._fallback)

    def _store_failed(self, exc: BaseException) -> None:
        # One slow answer under a burst is not an outage: this request is decided by the
        # failure policy, but the store is only set aside after several failures in a row.
        self.stats.store_errors += 1
        self._consecutive_failures += 1
        if self._consecutive_failures < self.failures_to_trip:
            return
        self._log_tripped.warning(
            "limit store failed %d times in a row (last: %s: %s); %s for %.1fs",
            self._consecutive_failures,
            type(exc).__name__,
            exc,
            "failing closed" if self.on_store_failure == "closed" else "using this node's share locally",
            self.retry_interval,
        )
        self._consecutive_failures = 0
        self._down_until = self._clock() + self.retry_interval

    def _local(self, limits: Sequence[Limit]) -> list[Limit]:
        """This node's share of each limit, for the fail-open store."""
        if self.fallback_share >= 1:
            return list(limits)
        scaled = []
        for limit in limits:
            mine = self._scaled.get(limit)
            if mine is None:
                share = self.fallback_share
                mine = replace(
                    limit,
                    amount=max(1, math.floor(limit.amount * share)),
                    burst=max(1, math.floor(limit.burst * share)) if limit.burst else None,
                )
                self._scaled[limit] = mine
            scaled.append(mine)
        return scaled

    # -- decisions -----------------------------------------------------------------------------

    async def _try(self, limits: Sequence[Limit], costs: Sequence[int], lease: str | None) -> Decision:
        """One decision, now: from the in-process store directly (it answers at once and cannot
        fail), else from the shared store under the failure policy."""
        if self._direct is not None:
            return self._direct.acquire_now(limits, costs, lease)
        decision, fell_back = await self._guarded(
            lambda s: s.acquire(limits, costs, lease),
            lambda s: s.acquire(self._local(limits), costs, lease),
        )
        if fell_back:
            # Report the real limits (not the node's share) to the caller, charged where it was.
            decision = replace(decision, fallback=True)
        return decision

    async def acquire(
        self,
        limits: Sequence[Limit],
        costs: Sequence[int],
        *,
        max_wait: float = 0.0,
        priority: int = 0,
    ) -> Decision:
        """Charge every limit its cost, all or nothing, waiting up to ``max_wait`` seconds."""
        lease = None
        for limit in limits:
            # By value, as limits/_usage compares units: a member looked up through its enum class
            # is a slow attribute access, here on every limit of every request (bench/NOTES.md).
            if limit.algorithm == "concurrency":
                lease = os.urandom(8).hex()
                break
        queued_behind = None
        if max_wait > 0 and self.queue.waiting:
            # Others are already waiting for one of these limits: queue behind them rather than
            # take the capacity that is coming back for them.
            queued_behind = self.queue.any_line([limit.key for limit in limits])
        if queued_behind is not None:
            decision = await self._wait(limits, costs, lease, None, queued_behind, max_wait, priority)
        else:
            decision = await self._try(limits, costs, lease)
            if not decision.allowed and max_wait > 0 and not decision.never_fits and decision.denied_by:
                decision = await self._wait(
                    limits, costs, lease, decision, decision.denied_by.limit.key, max_wait, priority
                )
        if decision.allowed and lease is not None:
            self._hold(lease, limits, decision.fallback)
        return decision

    async def reserve(
        self, limits: Sequence[Limit], usage: Usage, *, max_wait: float = 0.0, priority: int = 0
    ) -> Reservation:
        """Charge every limit what ``usage`` costs on it (``cost_on``), all or nothing, waiting up
        to ``max_wait`` seconds: the reservation to settle, move, refund or release later."""
        costs = costs_on(limits, usage)
        decision = await self.acquire(limits, costs, max_wait=max_wait, priority=priority)
        return Reservation(self, limits, decision, usage, costs)

    async def _wait(
        self,
        limits: Sequence[Limit],
        costs: Sequence[int],
        lease: str | None,
        decision: Decision | None,
        line_key: str,
        max_wait: float,
        priority: int,
    ) -> Decision:
        deadline = self._clock() + max_wait
        if decision is not None and decision.retry_after > max_wait:
            return decision
        queue = self.queue
        if queue.full:
            self.stats.queue_full += 1
            return decision if decision is not None else await self._try(limits, costs, lease)
        self.stats.waited += 1
        me = queue.join(line_key, priority)
        try:
            while True:
                # Wait for our turn at the head of the line...
                if not await queue.wait_turn(line_key, me, deadline):
                    self.stats.wait_timeouts += 1
                    return decision if decision is not None else await self._try(limits, costs, lease)
                # ...then for the capacity the store said would return.
                pause = decision.retry_after if decision is not None else 0.0
                if self._clock() + pause > deadline:
                    # (Woken at the head just past the deadline, without a decision yet: one look.)
                    self.stats.wait_timeouts += 1
                    return decision if decision is not None else await self._try(limits, costs, lease)
                if pause > 0:
                    await self._sleep(pause)
                    if not queue.is_head(line_key, me):
                        continue  # someone of higher priority arrived meanwhile: after them
                decision = await self._try(limits, costs, lease)
                if decision.allowed or decision.never_fits:
                    return decision
                assert decision.denied_by is not None
                if decision.denied_by.limit.key != line_key:
                    # Another of our limits is the bottleneck now: move to its line.
                    queue.move(line_key, decision.denied_by.limit.key, me)
                    line_key = decision.denied_by.limit.key
        finally:
            queue.leave(line_key, me)

    # -- after the call --------------------------------------------------------------------------

    async def settle(self, decision: Decision, limits: Sequence[Limit], deltas: Sequence[int]) -> None:
        """Correct each limit by ``delta`` (actual minus estimated); never raises for a store failure."""
        if not any(deltas):
            return
        windows = [s.window for s in decision.statuses]
        if self._direct is not None:
            self._direct.settle_now(limits, deltas, windows)
            return
        if decision.fallback:
            await self._fallback.settle(self._local(limits), deltas, windows)
            return
        try:
            await self._guarded(
                lambda s: s.settle(limits, deltas, windows),
                lambda s: s.settle(self._local(limits), deltas, windows),
            )
        except StoreUnavailableError:
            self._log_settle.warning("could not settle %d limits: the store is unavailable", len(limits))

    async def release(self, decision: Decision, limits: Sequence[Limit], *, keep_renewing: bool = False) -> None:
        """Give back a concurrency lease on ``limits``; ``keep_renewing``: the lease goes on
        holding the decision's other limits (only some of its slots are given back)."""
        if decision.lease is None:
            return
        if not keep_renewing:
            self._leases.pop(decision.lease, None)
        try:
            if decision.fallback:
                await self._fallback.release(self._local(limits), decision.lease)
            else:
                await self._guarded(
                    lambda s: s.release(limits, decision.lease or ""),
                    lambda s: s.release(self._local(limits), decision.lease or ""),
                )
        except StoreUnavailableError:
            self._log_release.warning("could not release a lease: the store is unavailable; it will expire")

    async def status(self, limits: Sequence[Limit]) -> tuple[LimitStatus, ...]:
        statuses, _ = await self._guarded(lambda s: s.status(limits), lambda s: s.status(self._local(limits)))
        return statuses

    def _hold(self, lease: str, limits: Sequence[Limit], fallback: bool) -> None:
        self._leases[lease] = (limits, fallback)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_leases())

    async def _renew_leases(self) -> None:
        while self._leases:
            shortest = min(
                lim.lease_seconds
                for limits, _ in self._leases.values()
                for lim in limits
                if lim.algorithm is Algorithm.CONCURRENCY
            )
            await asyncio.sleep(shortest / 3)
            for lease, (limits, fallback) in list(self._leases.items()):
                try:
                    store = self._fallback if fallback else self.store
                    async with asyncio.timeout(self.timeout):
                        await store.renew(self._local(limits) if fallback else limits, lease)
                except Exception as exc:
                    self._log_renew.warning("could not renew a concurrency lease: %s", exc)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        await self.store.aclose()
